"""Real sandboxes for the escape tests: a data directory with a repository holding a granted
and a foreign dataset tree and platform secrets, and a local compute backend that launches
bubblewrap for real. Nothing here is mocked: the programs run inside launched sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portal.compute import DatasetMount, Exited, Resources, WorkloadSpec
from portal.compute.agent import Agent, Served
from portal.compute.local import LocalBackend, descendants
from portal.vncproxy import VncProxy
from vre.config import Config, load_config

SECRET = "platform-secret-value-7f3a"


@pytest.fixture
def sandbox_home(tmp_path: Path) -> Path:
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap is needed for the sandbox tests (scripts/setup.sh installs it)")
    home = tmp_path / "home"
    trees = home / "repository" / "datasets"
    for name, text in (("granted", "granted pixels"), ("foreign", "foreign pixels")):
        (trees / name / "series").mkdir(parents=True)
        (trees / name / "series" / "slice.dcm").write_text(text)
        (trees / name / "series" / "slice.dcm").chmod(0o644)
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "token-signing.pem").write_text(SECRET)
    (home / "keys" / "token-signing.pem").chmod(0o600)
    home.chmod(0o700)
    return home


@pytest.fixture
def sandbox_config(sandbox_home: Path) -> Config:
    return load_config(env={}, home=sandbox_home, secret_key="s" * 48,
                       service_secret="t" * 48, demo_data=False)


@pytest.fixture
def compute(sandbox_config: Config) -> Iterator[LocalBackend]:
    backend = LocalBackend(sandbox_config)
    yield backend
    for home in backend.root.iterdir():
        with contextlib.suppress(Exception):
            backend.stop(home.name, now=True)


GRANTED = DatasetMount(dataset_id="granted", name="Chest CT", version="1.0",
                       content_hash="0" * 64, tree="datasets/granted")
SMALL = Resources(cpus=1, memory_mib=512, pids=256, max_runtime_seconds=120)


def spec(command: list[str] | tuple[str, ...], *, owner: str = "alice",
         mounts: tuple[DatasetMount, ...] = (GRANTED,), resources: Resources = SMALL,
         kind: str = "job", **extra: object) -> WorkloadSpec:
    return WorkloadSpec(workload_id="w" + uuid.uuid4().hex[:12], owner=owner, kind=kind,
                        application="terminal", command=tuple(command), resources=resources,
                        mounts=mounts, **extra)  # type: ignore[arg-type]


def python(code: str) -> list[str]:
    """Run Python code inside the sandbox with the platform's own interpreter."""
    return [sys.executable, "-c", code]


def processes_named(ancestor: int, name: str) -> list[int]:
    """The live descendants of a process whose command is `name`; one that ends while the
    tree is read (a desktop's short-lived helpers do) is simply not among them."""
    found = []
    for pid in descendants(ancestor):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
    return found


def wait_exit(backend: LocalBackend, workload_id: str, timeout: float = 60) -> Exited:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = backend.poll(workload_id)
        if exited is not None:
            return exited
        time.sleep(0.05)
    backend.stop(workload_id, now=True)
    raise AssertionError(f"workload {workload_id} did not end in {timeout}s")


@pytest.fixture
def run(compute: LocalBackend) -> Callable[..., tuple[Exited, str]]:
    """Start a workload, wait for it to end, and answer how it ended and what it printed."""

    def run_it(command: list[str], **kwargs: object) -> tuple[Exited, str]:
        workload = spec(command, **kwargs)  # type: ignore[arg-type]
        compute.start(workload)
        exited = wait_exit(compute, workload.workload_id)
        text, _ = compute.logs(workload.workload_id)
        return exited, text.decode(errors="replace")

    return run_it


@contextlib.contextmanager
def serving_agent(agent: Agent, path: Path) -> Iterator[Served]:
    """The compute agent served on its socket, as `vre up` runs it (`close` takes it down); at
    the end, every workload it started is stopped and the agent closed."""
    served = Served(agent, path)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        yield served
    finally:
        for home in agent.backend.root.iterdir():
            with contextlib.suppress(Exception):
                agent.backend.stop(home.name, now=True)
        served.close()


@contextlib.contextmanager
def serving_proxy(proxy: VncProxy) -> Iterator[int]:
    """The VNC proxy on a free loopback port, in a thread of its own; its port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def run() -> None:
        async with proxy.serve("127.0.0.1", 0) as server:
            holder.update(port=server.sockets[0].getsockname()[1], server=server)
            ready.set()
            await server.serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the VNC proxy did not start"
    try:
        yield holder["port"]
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        thread.join(timeout=10)
