"""The local compute backend: each workload is a bubblewrap sandbox on this machine, watched
by a small keeper process that outlives the agent that started it, so a restarted agent
re-adopts running desktops instead of losing them.

On disk, under the data directory: `workloads/<id>/` holds the launcher and the keeper's
records (root only), `run/` the workload's token and sockets (the workload account only),
`output.log`, and `exit` once it ended; `workspaces/<owner>/` is the owner's persistent
folder, seen as ~/persistent in every workload of theirs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from portal.compute import (
    JOB_OUTPUTS,
    Capacity,
    ComputeBackend,
    ComputeError,
    Exited,
    Progress,
    Resources,
    WorkloadSpec,
    cgroups,
    dataset_folders,
    datasets_readme,
    job_outputs_inside,
    sandbox,
)
from portal.compute.outputs import Manifest, Unpinnable, manifest, pin_file
from vre.config import Config
from vre.files import write_whole

SESSION = Path(__file__).parent / "session"
# Packages of the platform a workload may import (its tools and clients); never a server's.
RUNTIME_PACKAGES = ("vre", "portal", "batch_tools")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TREE = re.compile(r"^datasets/[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
STOP_GRACE_SECONDS = 10.0
LOG_CHUNK = 1 << 20


def local_launch(command: Sequence[str]) -> tuple[str, ...]:
    """An application's local command as the sandbox runs it: `session:NAME` names one of the
    platform's own sessions (portal/compute/session/NAME-session). Refused when the
    application names nothing to run here, or a session the platform does not have."""
    if not command:
        raise ComputeError("application_not_local",
                           "this application names nothing to run on one machine")
    first, rest = command[0], tuple(command[1:])
    if first.startswith("session:"):
        script = SESSION / f"{first.removeprefix('session:')}-session"
        if not script.is_file():
            raise ComputeError("application_not_local", f"there is no session {first!r}")
        return (str(script), *rest)
    return (first, *rest)


def api_socket_path(config: Config, workload_id: str) -> Path:
    """Where a workload's way to the platform's API listens: its run folder, which the
    sandbox sees as /run/vre (see portal.compute.gateway)."""
    return config.home / "workloads" / workload_id / "run" / "api.sock"


def ensure_workload_user(name: str) -> sandbox.HostUser:
    """The unprivileged host account sandboxes run as, created (as a system account without
    a home or a login shell) when missing and this process may create it."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise ComputeError("workload_user_missing",
                               f"the host account {name!r} for sandboxes does not exist; create "
                               "it or set VRE_WORKLOAD_USER") from None
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise ComputeError("workload_user_root", f"the sandbox account {name!r} is root")
    return sandbox.HostUser(uid=entry.pw_uid, gid=entry.pw_gid)


def _starttime(pid: int) -> int | None:
    """A live process's start time in clock ticks since boot, which tells a pid reused apart;
    None once it ended (a keeper this process started is reaped here)."""
    if pid <= 0:
        return None
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def descendants(pid: int) -> list[int]:
    """Every descendant of a process, deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _host_gpus(config: Config) -> tuple[str, ...]:
    """The GPUs this host has, as the indexes CUDA_VISIBLE_DEVICES takes: the declared
    inventory (`gpu_devices`) where there is one, else what nvidia-smi lists."""
    if config.gpu_devices is not None:
        return tuple(config.gpu_devices)
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU "))


def _host_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def runtime_folders() -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The host folders a workload needs to run Python with the platform's tools (seen
    read-only at the same paths), the PATH that finds them first, and the PYTHONPATH that
    finds the platform's packages kept outside the environment (a source checkout)."""
    folders = [sys.prefix, sys.base_prefix]
    sources: list[str] = []
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            package = str(Path(spec.origin).parent)
            if not any(package.startswith(f + "/") for f in folders):
                folders.append(package)
                sources.append(str(Path(package).parent))
    unique = tuple(dict.fromkeys(str(Path(f)) for f in folders))
    path = (str(Path(sys.prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin")
    return unique, path, ":".join(dict.fromkeys(sources))


def share_repository(root: Path, gid: int) -> None:
    """Give the repository to the workloads' group: every folder and file takes the group,
    and folders the set-group-id bit, so what is stored later keeps it. Modes stay as the
    repository set them (group-readable, never world-readable)."""
    if not root.is_dir() or (root.stat().st_gid == gid and root.stat().st_mode & stat.S_ISGID):
        return
    for folder, _dirs, files in os.walk(root):
        os.chown(folder, -1, gid)
        os.chmod(folder, os.stat(folder).st_mode & 0o7777 | stat.S_ISGID)
        for name in files:
            os.chown(os.path.join(folder, name), -1, gid, follow_symlinks=False)


class LocalBackend(ComputeBackend):
    """Workloads in bubblewrap sandboxes on this machine, limited through cgroup v1."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.root = config.home / "workloads"
        self.workspaces = config.home / "workspaces"
        self.repository = config.repository_path.resolve()
        self.user = ensure_workload_user(config.workload_user)
        self.bwrap = shutil.which("bwrap")
        self.limits = cgroups.available()
        self.gpus = _host_gpus(config)
        self._exits = threading.Lock()
        if os.geteuid() == 0:
            share_repository(self.repository, self.user.gid)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.workspaces.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- the contract ------------------------------------------------------------------------
    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        if not self.bwrap:
            raise ComputeError("sandbox_unavailable",
                               "bubblewrap (bwrap) is not installed on this host")
        if not _SAFE_ID.match(spec.workload_id) or not _SAFE_ID.match(spec.owner):
            raise ComputeError("bad_spec", "workload and owner ids are letters, digits, - and _")
        why = self.capacity().never_fits(spec.resources)
        if why:
            raise ComputeError("exceeds_host", why)
        command = local_launch(spec.command)
        trees = [self._tree(m.tree) for m in spec.mounts]
        datasets = tuple(zip(map(str, trees), dataset_folders(spec.mounts), strict=True))
        try:
            environment = sandbox.check_environment(spec.environment)
        except ValueError as exc:
            raise ComputeError("bad_environment", str(exc)) from None
        home = self.root / spec.workload_id
        try:
            home.mkdir(mode=0o700)
        except FileExistsError:
            raise ComputeError("workload_exists", f"workload {spec.workload_id} exists") from None
        try:
            return self._launch(replace(spec, command=command), home, datasets, environment)
        except BaseException:
            cgroups.remove(spec.workload_id)
            shutil.rmtree(home, ignore_errors=True)
            raise

    def adopt(self, workload_id: str, state: Mapping[str, Any]) -> bool:
        home = self.root / workload_id
        if not home.is_dir():
            return False
        if (home / "exit").exists() or (home / "exited.json").exists():
            return True
        return _starttime(int(state.get("pid", 0))) == state.get("starttime")

    def poll(self, workload_id: str) -> Exited | None:
        home = self._home(workload_id)
        recorded = home / "exited.json"
        if recorded.exists():
            return Exited(**json.loads(recorded.read_text()))
        # One thread records an exit (reads the cgroup's usage, then removes the cgroup);
        # another polling the same workload meanwhile waits and reads what it recorded.
        with self._exits:
            if recorded.exists():
                return Exited(**json.loads(recorded.read_text()))
            return self._poll_once(workload_id, home, recorded)

    def _poll_once(self, workload_id: str, home: Path, recorded: Path) -> Exited | None:
        state = self._state(home)
        status_file = home / "exit"
        # Liveness first: the keeper writes the exit before it ends, so a keeper seen gone
        # has left its exit file unless it was killed.
        alive = _starttime(state["pid"]) == state["starttime"]
        if status_file.exists():
            status = int(status_file.read_text().strip() or -1)
            reason = ""
        elif alive:
            return None
        else:
            status, reason = -1, "vanished: its keeper process is gone"
        used = cgroups.usage(workload_id) if state.get("limits") else None
        if (home / "stopping").exists():
            reason = "stopped"
        elif status == 124:
            reason = "time_limit"
        elif used and used.oom_killed:
            reason = "out_of_memory"
        exited = Exited(status=status, reason=reason,
                        cpu_seconds=used.cpu_seconds if used else 0.0,
                        memory_peak_bytes=used.memory_peak_bytes if used else 0)
        if state.get("limits"):
            cgroups.kill_all(workload_id)
            cgroups.remove(workload_id)
        write_whole(recorded, json.dumps(asdict(exited)))
        return exited

    def stop(self, workload_id: str, now: bool = False) -> None:
        home = self._home(workload_id)
        if self.poll(workload_id) is not None:
            return
        (home / "stopping").touch()
        state = self._state(home)
        if not now:
            self._signal(workload_id, state, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while time.monotonic() < deadline and self.poll(workload_id) is None:
                time.sleep(0.1)
        while self.poll(workload_id) is None:
            self._signal(workload_id, state, signal.SIGKILL)
            time.sleep(0.05)

    def logs(self, workload_id: str, offset: int = 0) -> tuple[bytes, int]:
        log = self._home(workload_id) / "output.log"
        try:
            with log.open("rb") as handle:
                handle.seek(max(0, offset))
                data = handle.read(LOG_CHUNK)
        except FileNotFoundError:
            return b"", offset
        return data, max(0, offset) + len(data)

    def progress(self, workload_id: str) -> list[Progress]:
        home = self._home(workload_id)
        steps = [Progress(20, "sandbox prepared")]
        if self.poll(workload_id) is None:
            steps.append(Progress(60, "sandbox running"))
            if self._state(home)["kind"] == "desktop" and self.vnc_socket(workload_id):
                steps.append(Progress(100, "desktop ready"))
        return steps

    def vnc_socket(self, workload_id: str) -> Path | None:
        socket = self._home(workload_id) / "display" / "vnc.sock"
        return socket if socket.is_socket() else None

    def api_socket(self, workload_id: str) -> Path | None:
        self._home(workload_id)
        return api_socket_path(self.config, workload_id)

    def capacity(self) -> Capacity:
        cpus = float(len(os.sched_getaffinity(0)))
        memory = _host_memory_mib()
        used = [r for r in self._running_resources()]
        return Capacity(
            total_cpus=cpus, total_memory_mib=memory, total_gpus=len(self.gpus),
            free_cpus=max(0.0, cpus - sum(r.cpus for r in used)),
            free_memory_mib=max(0, memory - sum(r.memory_mib for r in used)),
            free_gpus=max(0, len(self.gpus) - sum(r.gpus for r in used)),
            gpu_ids=self.gpus, limits_enforced=self.limits)

    def notify(self, workload_id: str, text: str | None) -> None:
        """The message lies in the run folder (`/run/vre/notice` inside), where the desktop's
        session shows it; written whole and renamed, so it is never read half-written."""
        run = self._home(workload_id) / "run"
        notice = run / "notice"
        if text is None:
            notice.unlink(missing_ok=True)
            return
        write_whole(notice, text + "\n",
                    owner=(self.user.uid, self.user.gid) if os.geteuid() == 0 else None)

    def pin(self, owner: str, path: str, dest: Path, max_bytes: int) -> tuple[int, str]:
        if not _SAFE_ID.match(owner):
            raise ComputeError("bad_spec", "owner ids are letters, digits, - and _")
        try:
            return pin_file(self.workspaces / owner, path, dest, max_bytes)
        except Unpinnable as exc:
            raise ComputeError(exc.code, exc.reason) from None

    def outputs(self, workload_id: str) -> Manifest:
        state = self._state(self._home(workload_id))
        return manifest(self._job_outputs(state["owner"], workload_id))

    # -- inside ------------------------------------------------------------------------------
    def _job_outputs(self, owner: str, workload_id: str) -> Path:
        if not _SAFE_ID.match(owner):
            raise ComputeError("bad_spec", "owner ids are letters, digits, - and _")
        return self.workspaces / owner / JOB_OUTPUTS / workload_id

    def _tree(self, tree: str) -> Path:
        """The host folder of a granted dataset tree, refused unless it is a dataset tree of
        this repository."""
        if not _TREE.match(tree):
            raise ComputeError("mount_refused", f"{tree!r} is not a dataset tree")
        path = (self.repository / tree).resolve()
        if path.parent != (self.repository / "datasets").resolve() or not path.is_dir():
            raise ComputeError("mount_refused", f"dataset tree {tree!r} is not in the repository")
        return path

    def _home(self, workload_id: str) -> Path:
        if not _SAFE_ID.match(workload_id):
            raise ComputeError("workload_unknown", "no such workload")
        home = self.root / workload_id
        if not (home / "state.json").exists():
            raise ComputeError("workload_unknown", f"no workload {workload_id}")
        return home

    @staticmethod
    def _state(home: Path) -> dict[str, Any]:
        return json.loads((home / "state.json").read_text())

    def _running_resources(self) -> list[Resources]:
        found = []
        for home in self.root.iterdir() if self.root.is_dir() else ():
            try:
                state = self._state(home)
            except (FileNotFoundError, ValueError):
                continue
            if not (home / "exit").exists() and _starttime(state["pid"]) == state["starttime"]:
                found.append(Resources(**{k: v for k, v in state["resources"].items()
                                          if k != "gpu_ids"}))
        return found

    def _persistent(self, owner: str) -> Path:
        folder = self.workspaces / owner
        folder.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(folder, self.user.uid, self.user.gid)
        return folder

    def _make_job_outputs(self, persistent: Path, workload_id: str) -> None:
        """Make ~/persistent/jobs/<id> for the job, never following what earlier workloads of
        the owner left in their persistent folder (a link named `jobs` stays a link)."""
        owner = os.open(persistent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(JOB_OUTPUTS, 0o755, dir_fd=owner)
            try:
                jobs = os.open(JOB_OUTPUTS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                               dir_fd=owner)
            except OSError:
                raise ComputeError("outputs_refused", "~/persistent/jobs is not a folder; "
                                   "move what is there away") from None
            try:
                os.mkdir(workload_id, 0o755, dir_fd=jobs)
                if os.geteuid() == 0:
                    os.chown(workload_id, self.user.uid, self.user.gid, dir_fd=jobs,
                             follow_symlinks=False)
                    os.chown(jobs, self.user.uid, self.user.gid)
            finally:
                os.close(jobs)
        finally:
            os.close(owner)

    def _launch(self, spec: WorkloadSpec, home: Path,
                datasets: tuple[tuple[str, str], ...],
                environment: dict[str, str]) -> dict[str, Any]:
        root = os.geteuid() == 0
        run = home / "run"
        run.mkdir(mode=0o700)
        etc = home / "etc"
        etc.mkdir()
        # Set after creation: mkdir's mode passes through the umask, and `vre up` runs with
        # 0077; the sandbox account must read its own /etc.
        etc.chmod(0o755)
        for name, text in sandbox.passwd_files().items():
            (etc / name).write_text(text)
            (etc / name).chmod(0o644)
        token = run / "token"
        token.write_text(spec.token)
        token.chmod(0o600)
        if root:
            os.chown(run, self.user.uid, self.user.gid)
            os.chown(token, self.user.uid, self.user.gid)
        runtime, path, pythonpath = runtime_folders()
        platform_env = {"VRE_APPLICATION": spec.application}
        if pythonpath:
            platform_env["PYTHONPATH"] = pythonpath
        if spec.kind == "desktop":
            platform_env.update(DISPLAY=sandbox.DISPLAY)
        if spec.resources.gpu_ids:
            platform_env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.resources.gpu_ids)
        elif spec.kind == "job":
            platform_env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job sees no GPU
        persistent = self._persistent(spec.owner)
        if spec.kind == "job":
            self._make_job_outputs(persistent, spec.workload_id)
            platform_env.update(VRE_JOB_ID=spec.workload_id,
                                VRE_JOB_OUTPUT=job_outputs_inside(spec.workload_id))
        readme = home / "datasets-README"
        readme.write_text(datasets_readme(spec.mounts))
        host_etc = tuple(e for e in sandbox.ETC_ENTRIES if Path("/etc", e).exists())
        display = self._display(spec, home, str(etc), host_etc) \
            if spec.kind == "desktop" else None
        plan = sandbox.SandboxPlan(
            workload_id=spec.workload_id, command=tuple(spec.command), run_dir=str(run),
            etc_dir=str(etc), persistent=str(persistent), datasets=datasets,
            runtime=runtime, path=path, environment=environment, platform_env=platform_env,
            host_etc=host_etc, hostname=f"vre-{spec.kind}", readme=str(readme),
            x11=display.x11 if display else None)
        launcher = home / "launch.sh"
        bwrap = self.bwrap or "bwrap"
        if root:
            launcher.write_text(sandbox.launch_script(plan, self.user, bwrap, display))
            inner = ["unshare", "--mount", "--propagation", "private", "bash", str(launcher)]
        else:
            launcher.write_text(sandbox.launch_lines(
                plan, sandbox.bwrap_argv(plan, bwrap, direct=True), display,
                sandbox.bwrap_argv(display, bwrap, direct=True) if display else None))
            inner = ["bash", str(launcher)]
        launcher.chmod(0o700)
        procs = []
        if self.limits:
            procs = [str(p) for p in cgroups.create(spec.workload_id, spec.resources).values()]
        timeout = ["timeout", "--signal=TERM", "--kill-after=10",
                   str(max(1, spec.resources.max_runtime_seconds))]
        join = ('for f in "$@"; do echo $$ > "$f"; done; exec ' + shlex.join(timeout + inner))
        keeper = (f"sh -c {shlex.quote(join)} join {shlex.join(procs)} "
                  f">> {shlex.quote(str(home / 'output.log'))} 2>&1\n"
                  f"echo $? > {shlex.quote(str(home / 'exit.tmp'))}\n"
                  f"mv {shlex.quote(str(home / 'exit.tmp'))} {shlex.quote(str(home / 'exit'))}\n")
        (home / "keeper.sh").write_text(keeper)
        process = subprocess.Popen(["sh", str(home / "keeper.sh")], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, close_fds=True, cwd="/", env={
                                       "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        state = {"pid": process.pid, "starttime": _starttime(process.pid), "kind": spec.kind,
                 "owner": spec.owner, "limits": self.limits, "started_at": time.time(),
                 "resources": asdict(spec.resources), "folders": [f for _, f in datasets]}
        write_whole(home / "state.json", json.dumps(state))
        return state

    def _display(self, spec: WorkloadSpec, home: Path, etc: str,
                 host_etc: tuple[str, ...]) -> sandbox.SandboxPlan:
        """A desktop's display sandbox: Xvnc alone, its VNC socket in a folder the session
        never sees, its X11 socket in a folder the session sees read-only."""
        folders = {}
        for name in ("display", "x11"):
            folder = home / name
            folder.mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(folder, self.user.uid, self.user.gid)
            folders[name] = str(folder)
        return sandbox.SandboxPlan(
            workload_id=spec.workload_id, run_dir=folders["display"], etc_dir=etc,
            command=sandbox.display_command(spec.clipboard_out), host_etc=host_etc,
            hostname="vre-display", x11=folders["x11"], x11_writable=True, stage_name="d")

    def _signal(self, workload_id: str, state: Mapping[str, Any], sig: int) -> None:
        """Signal everything the workload runs (not its keeper, which records the exit)."""
        if state.get("limits"):
            cgroups.kill_all(workload_id, sig)
        if _starttime(state["pid"]) != state["starttime"]:
            return
        for pid in descendants(state["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
