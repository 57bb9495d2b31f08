"""Where workloads (desktops and batch jobs) run, behind one small contract: a bubblewrap
sandbox on one machine, Kubernetes pods on a cluster; chosen by the `compute_backend` setting.

Only the compute agent holds a backend: web workers ask the agent, they never start
sandboxes. A backend knows nothing of accounts, grants or quotas: the caller has decided all
of that and hands over a complete `WorkloadSpec`."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from portal.compute import sandbox
from portal.compute.outputs import Manifest
from vre.config import Config

# What each value of the `compute_backend` setting names: module:class, imported only when chosen.
IMPLEMENTATIONS = {
    "local": "portal.compute.local:LocalBackend",
}

Kind = Literal["desktop", "job"]
# Where a job's outputs go, under the owner's persistent folder, on every backend.
JOB_OUTPUTS = "jobs"


def job_outputs_inside(workload_id: str) -> str:
    """The path a job sees its output folder at (also $VRE_JOB_OUTPUT inside the job)."""
    return f"{sandbox.HOME}/persistent/{JOB_OUTPUTS}/{workload_id}"


class ComputeError(Exception):
    """A workload that cannot be started or reached, with a stable code and a reason a person
    can act on (a flavor the host can never satisfy, a mount outside the repository)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class DatasetMount:
    """One granted dataset as the grant names it: the backend maps `tree` (relative to the
    repository root) to what it mounts, read-only, at `~/datasets/<folder>`."""

    dataset_id: str
    name: str
    version: str
    content_hash: str
    tree: str
    project: str = ""  # the project (by name) whose stewards review what leaves


def dataset_folders(mounts: tuple[DatasetMount, ...] | list[DatasetMount]) -> list[str]:
    """The folder each granted dataset shows as under ~/datasets, in order: the same on every
    backend, so a researcher's paths and the README in ~/datasets hold wherever it runs."""
    taken: set[str] = set()
    return [sandbox.dataset_folder(m.name, m.dataset_id, taken) for m in mounts]


def datasets_readme(mounts: tuple[DatasetMount, ...] | list[DatasetMount]) -> str:
    """The text of ~/datasets/README: each mounted dataset's folder, name, version and
    content hash, so a result can name exactly the data it came from."""
    lines = ["The datasets granted to this workload, read-only. Each folder is one dataset at",
             "one version; its content hash names exactly these files.", ""]
    for mount, folder in zip(mounts, dataset_folders(mounts), strict=True):
        lines += [f"{folder}/", f"  name:         {mount.name or mount.dataset_id}",
                  f"  dataset id:   {mount.dataset_id}", f"  version:      {mount.version}",
                  f"  content hash: {mount.content_hash}", ""]
    if not mounts:
        lines.append("(none)")
    return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True)
class Resources:
    """What a flavor gives one workload: `gpus` counted, `gpu_ids` the devices handed over,
    `gpu_share` how many workloads may run on each of them at once (1: none beside it)."""

    cpus: float
    memory_mib: int
    pids: int = 512
    gpus: int = 0
    max_runtime_seconds: int = 3600
    gpu_ids: tuple[str, ...] = ()
    gpu_share: int = 1


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything a backend needs to start one workload, decided before it is called."""

    workload_id: str
    owner: str
    kind: Kind
    application: str
    command: tuple[str, ...]
    resources: Resources
    mounts: tuple[DatasetMount, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    token: str = ""
    image: str = ""
    clipboard_out: bool = False


@dataclass(frozen=True)
class Exited:
    """How a workload ended: its exit status and, when the platform ended it, why."""

    status: int
    reason: str = ""
    cpu_seconds: float = 0.0
    memory_peak_bytes: int = 0


@dataclass(frozen=True)
class Progress:
    """One step of a start, for the page that waits for it."""

    percent: int
    message: str


@dataclass(frozen=True)
class Capacity:
    """What the backend could ever run (`total`) and what it can run now (`free`)."""

    total_cpus: float
    total_memory_mib: int
    total_gpus: int
    free_cpus: float
    free_memory_mib: int
    free_gpus: int
    gpu_ids: tuple[str, ...] = ()
    limits_enforced: bool = True

    def never_fits(self, resources: Resources) -> str | None:
        """Why a workload asking this much could never start here, or None when it could."""
        if resources.gpus > self.total_gpus:
            have = f"{self.total_gpus} GPU" + ("" if self.total_gpus == 1 else "s")
            return f"asks for {resources.gpus} GPUs; this host has {have}"
        if resources.cpus > self.total_cpus:
            return f"asks for {resources.cpus:g} CPUs; this host has {self.total_cpus:g}"
        if resources.memory_mib > self.total_memory_mib:
            return (f"asks for {resources.memory_mib} MiB of memory; this host has "
                    f"{self.total_memory_mib} MiB")
        return None

    def fits_now(self, resources: Resources) -> bool:
        """Whether a workload asking this much can start at once."""
        return (resources.gpus <= self.free_gpus and resources.cpus <= self.free_cpus
                and resources.memory_mib <= self.free_memory_mib)


class ComputeBackend(ABC):
    """Starts, watches and stops workloads. Subclass this and override the methods below.

    - `start(spec)`: start the workload and answer its state, a JSON-able dict the caller
      keeps (in the database) and hands back to `adopt` after a restart. Raises
      `ComputeError` when the spec can never run here (nothing is left behind then).
    - `adopt(workload_id, state)`: re-attach to a workload started before this process did;
      False when it has vanished (the caller marks it failed with that reason).
    - `poll(workload_id)`: None while it runs, an `Exited` once it ended.
    - `stop(workload_id, now)`: end it: ask it to stop and wait a grace period, or kill it at
      once when `now`; afterwards `poll` answers the exit. Stopping an ended one does nothing.
    - `logs(workload_id, offset)`: the log bytes from `offset` on and the next offset, kept
      after the workload ended.
    - `progress(workload_id)`: the start-up steps so far.
    - `vnc_socket(workload_id)`: where a desktop's VNC server listens (a Unix socket only
      the platform may open), or None when it has none (yet).
    - `api_socket(workload_id)`: the socket inside the workload's run folder through which it
      reaches the platform's API, or None.
    - `capacity()`: what it can run now and the largest workload it could ever run.
    - `notify(workload_id, text)`: show a message inside a desktop (an idle warning), or take
      it away with None; a backend that cannot show one ignores it.
    - `outputs(workload_id)`: the manifest of a job's output folder (`~/persistent/jobs/<id>`
      inside), read without following anything the job left there.
    - `pin(owner, path, dest, max_bytes)`: copy a file of the owner's `~/persistent` to
      `dest` for an export request, following no link; its size and SHA-256.
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    @abstractmethod
    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        """Start a workload; its state to keep for `adopt`."""

    @abstractmethod
    def adopt(self, workload_id: str, state: Mapping[str, Any]) -> bool:
        """Re-attach after a restart; False when the workload vanished."""

    @abstractmethod
    def poll(self, workload_id: str) -> Exited | None:
        """None while running, the exit once ended."""

    @abstractmethod
    def stop(self, workload_id: str, now: bool = False) -> None:
        """End the workload (after a grace period unless `now`)."""

    @abstractmethod
    def logs(self, workload_id: str, offset: int = 0) -> tuple[bytes, int]:
        """Log bytes from `offset`, and the offset to read from next."""

    @abstractmethod
    def progress(self, workload_id: str) -> list[Progress]:
        """The start-up steps reached so far."""

    @abstractmethod
    def vnc_socket(self, workload_id: str) -> Path | None:
        """A desktop's VNC endpoint (a Unix socket), or None."""

    @abstractmethod
    def api_socket(self, workload_id: str) -> Path | None:
        """The socket the workload reaches the platform's API through, or None."""

    @abstractmethod
    def capacity(self) -> Capacity:
        """What this backend can run now, and ever."""

    def notify(self, workload_id: str, text: str | None) -> None:  # noqa: B027 - optional
        """Show `text` inside the desktop, or take the message away (None)."""

    @abstractmethod
    def outputs(self, workload_id: str) -> Manifest:
        """The manifest of a job's output folder."""

    @abstractmethod
    def pin(self, owner: str, path: str, dest: Path, max_bytes: int) -> tuple[int, str]:
        """Copy a file of the owner's ~/persistent to `dest`; its size and SHA-256."""


def spec_to_json(spec: WorkloadSpec) -> dict[str, Any]:
    """A spec as the agent's API carries it (and the database keeps it, without the token)."""
    # What `asdict` answers, built field by field: it deep-copies, and a burst of job
    # submissions turns every spec into JSON.
    data = dict(vars(spec))
    data["resources"] = dict(vars(spec.resources))
    data["mounts"] = tuple(dict(vars(m)) for m in spec.mounts)
    data["environment"] = dict(spec.environment)
    return data


def spec_from_json(data: Mapping[str, Any]) -> WorkloadSpec:
    """A spec from the agent's API, refused with `bad_spec` when a field is missing or wrong."""
    try:
        return WorkloadSpec(
            workload_id=str(data["workload_id"]), owner=str(data["owner"]),
            kind=data["kind"], application=str(data["application"]),
            command=tuple(str(a) for a in data["command"]),
            resources=Resources(**{**data["resources"],
                                   "gpu_ids": tuple(data["resources"].get("gpu_ids", ()))}),
            mounts=tuple(DatasetMount(**m) for m in data.get("mounts", ())),
            environment={str(k): str(v) for k, v in dict(data.get("environment", {})).items()},
            token=str(data.get("token", "")), image=str(data.get("image", "")),
            clipboard_out=bool(data.get("clipboard_out", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ComputeError("bad_spec", f"the workload spec is incomplete or wrong: {exc}") from None


def backend_for(config: Config) -> ComputeBackend:
    """The compute backend the configuration names."""
    target = IMPLEMENTATIONS.get(config.compute_backend)
    if target is None:
        raise ComputeError("backend_unknown", f"no compute backend {config.compute_backend!r}; "
                           f"VRE_COMPUTE_BACKEND is one of {', '.join(IMPLEMENTATIONS)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(config)
