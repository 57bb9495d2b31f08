"""Runs the platform's processes on one machine: starts them in order, waits until each is
ready, watches them, and stops them all together, leaving nothing half-started."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

_PR_SET_PDEATHSIG = 1


class SupervisorError(Exception):
    """Something stopped the platform from starting or running; the message is one line."""


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the platform: how to start it and how to know it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None  # HTTP URL answering 200 once ready
    ready_check: Callable[[], bool] | None = field(default=None, compare=False)
    ready_timeout: float = 60.0
    port: int | None = None


@dataclass
class Running:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log_path: Path


def _die_with_parent() -> None:
    # Children get SIGTERM if the supervisor itself dies, even by SIGKILL: no orphans.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    last = lines[-1]
    with contextlib.suppress(ValueError, TypeError):
        entry = json.loads(last)
        last = entry.get("exception", "").strip().splitlines()[-1:] or [entry.get("msg", "")]
        last = last[0]
    return last[:300]


class Supervisor:
    """Starts processes in order and keeps them, or none of them, running."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.log_dir = home / "logs"
        self.running: list[Running] = []
        self._lock_file: IO[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def lock(self) -> None:
        """Only one supervisor per data directory."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / "vre.lock", "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SupervisorError(
                f"another 'vre up' is already running with data directory {self.home}") from None
        self._lock_file = handle

    def check_ports(self, specs: list[ProcessSpec], host: str) -> None:
        for spec in specs:
            if spec.port is not None and port_in_use(host, spec.port):
                raise SupervisorError(
                    f"port {spec.port} on {host} is already in use (needed by {spec.name}); "
                    f"stop what uses it or set VRE_{_port_key(spec.name)}")

    def start(self, spec: ProcessSpec) -> None:
        """Start one process and wait until it is ready; on failure, stop everything."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                spec.argv, env={**os.environ, **spec.env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        running = Running(spec, process, log_path)
        self.running.append(running)
        self._write_state()
        self._wait_ready(running)

    def _wait_ready(self, running: Running) -> None:
        spec = running.spec
        deadline = time.monotonic() + spec.ready_timeout
        while time.monotonic() < deadline:
            code = running.process.poll()
            if code is not None:
                raise SupervisorError(
                    f"{spec.name} exited with status {code} while starting: "
                    f"{_last_line(running.log_path)} (log: {running.log_path})")
            if self._is_ready(spec):
                return
            time.sleep(0.1)
        raise SupervisorError(
            f"{spec.name} did not become ready within {spec.ready_timeout:.0f} s: "
            f"{_last_line(running.log_path)} (log: {running.log_path})")

    @staticmethod
    def _is_ready(spec: ProcessSpec) -> bool:
        if spec.ready_check is not None:
            return spec.ready_check()
        if spec.ready_url is None:
            return True
        try:
            return requests.get(spec.ready_url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def watch(self, stop_requested: Callable[[], bool]) -> Running | None:
        """Block until asked to stop (None) or until a process dies (that process)."""
        while not stop_requested():
            for running in self.running:
                if running.process.poll() is not None:
                    return running
            time.sleep(0.2)
        return None

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop in reverse start order: SIGTERM, then SIGKILL after the grace period."""
        for running in reversed(self.running):
            if running.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for running in reversed(self.running):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                running.process.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait()
        self.running.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "state.json").unlink()

    # -- state for `vre status` --------------------------------------------------------------
    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "home": str(self.home), "started_at": time.time(),
                 "processes": [{"name": r.spec.name, "pid": r.process.pid,
                                "ready_url": r.spec.ready_url, "port": r.spec.port,
                                "log": str(r.log_path)} for r in self.running]}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "state.json")


def _port_key(name: str) -> str:
    return {"portal": "PORTAL_PORT", "dataset_service": "DATASET_PORT",
            "tracer": "TRACER_PORT"}.get(name, f"{name.upper().replace('-', '_')}_PORT")


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int
    alive: bool
    health: str


def read_status(home: Path) -> tuple[dict[str, Any] | None, list[ProcessStatus]]:
    """What the supervisor of this data directory runs, and how each process is doing."""
    path = home / "run" / "state.json"
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None, []
    if not _alive(state["pid"]):
        return None, []
    statuses = []
    for proc in state["processes"]:
        alive = _alive(proc["pid"])
        health = "stopped"
        if alive:
            health = "running"
            if proc.get("ready_url"):
                try:
                    resp = requests.get(proc["ready_url"], timeout=2)
                    health = "ready" if resp.status_code == 200 else \
                        f"not ready ({resp.json().get('reason', resp.status_code)})"
                except (requests.RequestException, ValueError):
                    health = "not answering"
        statuses.append(ProcessStatus(proc["name"], proc["pid"], alive, health))
    return state, statuses


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
