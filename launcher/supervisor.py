"""Runs the platform's processes on one machine: starts them in order, waits until each is
ready, restarts one that dies (with back-off, so the others keep serving), and stops them all
together, leaving nothing half-started."""

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

from vre.client import connect_unix

_PR_SET_PDEATHSIG = 1
#: A restarted process waits this long, doubled after each death that follows soon after its
#: start, up to RESTART_MAX; one that ran for STABLE_SECONDS starts again from the first delay.
RESTART_FIRST = 0.5
RESTART_MAX = 30.0
STABLE_SECONDS = 60.0


class SupervisorError(Exception):
    """Something stopped the platform from starting or running; the message is one line."""


@dataclass(frozen=True)
class Probe:
    """How to ask a process whether it answers, not merely whether it exists: kept in the state
    file, so `vre status` asks the very question the supervisor asked at start.

    ``http``: a GET of ``target`` answers 200. ``jsonrpc``: the JSON-RPC node on the IPC socket
    ``target`` answers ``eth_chainId``. ``heartbeat``: the file ``target`` was written within
    ``max_age`` seconds (a worker that rewrites it after every step).
    """

    kind: str
    target: str
    max_age: float = 30.0

    def ask(self, timeout: float = 2.0) -> str | None:
        """None when the process answers, else why not (one short phrase)."""
        if self.kind == "http":
            try:
                response = requests.get(self.target, timeout=timeout)
            except requests.RequestException:
                return "not answering"
            if response.status_code == 200:
                return None
            try:
                return f"not ready ({response.json().get('reason', response.status_code)})"
            except ValueError:
                return f"not ready ({response.status_code})"
        if self.kind == "jsonrpc":
            return _ask_jsonrpc(self.target, timeout)
        try:
            age = time.time() - Path(self.target).stat().st_mtime
        except OSError:
            return "not ready (no heartbeat yet)"
        return None if age <= self.max_age else f"not answering (silent for {age:.0f} s)"


def _ask_jsonrpc(path: str, timeout: float) -> str | None:
    request = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}\n'
    try:
        with connect_unix(path, timeout) as sock:
            sock.sendall(request)
            answer = b""
            while not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return None if b'"result"' in answer else "not answering (no chain id)"
    except TimeoutError:
        return "not answering"
    except OSError as exc:
        return f"not answering ({exc.strerror or exc})"


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the platform: how to start it and how to know it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None  # HTTP URL answering 200 once ready
    ready_check: Callable[[], bool] | None = field(default=None, compare=False)
    ready_timeout: float = 120.0
    port: int | None = None
    probe: Probe | None = None  # how it shows it answers (default: ready_url)
    before_start: Callable[[], None] | None = field(default=None, compare=False)
    # How it is asked to stop, and how long it may take before it is killed: a process that
    # writes its state on the way out (the chain node) must not be killed while writing it.
    stop_signal: int = signal.SIGTERM
    stop_grace: float = 10.0
    # Signal what the process wraps, not the wrapper: bubblewrap dies at once on a signal and
    # takes the wrapped process with it, mid-write (the chain node's state file left empty).
    stop_wrapped: bool = False

    @property
    def health_probe(self) -> Probe | None:
        if self.probe is not None:
            return self.probe
        return Probe("http", self.ready_url) if self.ready_url else None


@dataclass
class Running:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    quick_deaths: int = 0
    restart_at: float | None = None


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


def _children(pid: int) -> list[int]:
    """A process's direct children (none once it ended)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


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
        log_path = self.log_dir / f"{spec.name}.log"
        running = Running(spec, self._spawn(spec, log_path), log_path)
        self.running.append(running)
        self._write_state()
        self._wait_ready(running)

    def _spawn(self, spec: ProcessSpec, log_path: Path) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if spec.before_start is not None:
            spec.before_start()
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                spec.argv, env={**os.environ, **spec.env}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_ready(self, running: Running) -> None:
        spec = running.spec
        deadline = time.monotonic() + spec.ready_timeout
        answer = "not asked yet"
        while time.monotonic() < deadline:
            code = running.process.poll()
            if code is not None:
                raise SupervisorError(
                    f"{spec.name} exited with status {code} while starting: "
                    f"{_last_line(running.log_path)} (log: {running.log_path})")
            answer = self._readiness(spec)
            if answer is None:
                return
            time.sleep(0.1)
        # The last answer says which question went unanswered (no connection, a 503 with its
        # reason, a missing socket); the log's last line says what the process said last.
        raise SupervisorError(
            f"{spec.name} did not become ready within {spec.ready_timeout:.0f} s ({answer}): "
            f"{_last_line(running.log_path)} (log: {running.log_path})")

    @staticmethod
    def _readiness(spec: ProcessSpec) -> str | None:
        """None once the process is ready, else why not."""
        if spec.ready_check is not None:
            return None if spec.ready_check() else "its readiness check fails"
        probe = spec.health_probe
        # A loaded machine answers slowly: wait longer per question than for `vre status`.
        return None if probe is None else probe.ask(timeout=5)

    def watch(self, stop_requested: Callable[[], bool],
              on_event: Callable[[str], None] | None = None) -> None:
        """Keep every process running until asked to stop: one that dies is started again
        after a back-off (doubling while it keeps dying soon after its start), while the
        others go on serving. `on_event` hears each death and restart, in one line."""
        while not stop_requested():
            self.tend(on_event)
            time.sleep(0.1)

    def tend(self, on_event: Callable[[str], None] | None = None) -> None:
        """One round of watching: note the processes that died, restart those whose turn came."""
        now = time.monotonic()
        for running in self.running:
            if running.restart_at is None:
                code = running.process.poll()
                if code is None:
                    continue
                quick = now - running.started < STABLE_SECONDS
                running.quick_deaths = running.quick_deaths + 1 if quick else 1
                delay = min(RESTART_MAX, RESTART_FIRST * 2 ** (running.quick_deaths - 1))
                running.restart_at = now + delay
                if on_event is not None:
                    on_event(f"{running.spec.name} exited with status {code}; restarting in "
                             f"{delay:g} s (log: {running.log_path})")
            elif now >= running.restart_at:
                try:
                    running.process = self._spawn(running.spec, running.log_path)
                except (OSError, SupervisorError) as exc:
                    running.restart_at = now + RESTART_MAX
                    if on_event is not None:
                        on_event(f"{running.spec.name} could not be restarted: {exc}")
                    continue
                running.started, running.restart_at = now, None
                running.restarts += 1
                self._write_state()
                if on_event is not None:
                    on_event(f"{running.spec.name} restarted (pid {running.process.pid})")

    def stop_all(self) -> None:
        """Stop in reverse start order, each process after those that depend on it have
        ended: its stop signal, then SIGKILL once its own grace period is over. One slow to
        stop never eats into the time of the next (the chain node, last, writes its state)."""
        for running in reversed(self.running):
            if running.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if running.spec.stop_wrapped:
                        for child in _children(running.process.pid):
                            os.kill(child, running.spec.stop_signal)
                    else:
                        os.killpg(running.process.pid, running.spec.stop_signal)
            try:
                running.process.wait(running.spec.stop_grace)
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
                                "probe": _probe_state(r.spec.health_probe),
                                "restarts": r.restarts,
                                "log": str(r.log_path)} for r in self.running]}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "state.json")


def _probe_state(probe: Probe | None) -> dict[str, Any] | None:
    return None if probe is None else {"kind": probe.kind, "target": probe.target,
                                       "max_age": probe.max_age}


def _port_key(name: str) -> str:
    return {"portal": "PORTAL_PORT", "dataset_service": "DATASET_PORT",
            "tracer": "TRACER_PORT"}.get(name, f"{name.upper().replace('-', '_')}_PORT")


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int
    alive: bool
    health: str
    restarts: int = 0


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
        if alive and _frozen(proc["pid"]):
            health = "not answering (stopped by a signal)"
        elif alive:
            found = proc.get("probe") or (
                {"kind": "http", "target": proc["ready_url"]} if proc.get("ready_url") else None)
            health = "running" if found is None else Probe(**found).ask() or "ready"
        statuses.append(ProcessStatus(proc["name"], proc["pid"], alive, health,
                                      proc.get("restarts", 0)))
    return state, statuses


def _frozen(pid: int) -> bool:
    """Stopped (SIGSTOP) or traced: alive, and answering nothing."""
    try:
        # The state follows the command name, which is in parentheses and may hold spaces.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("T", "t")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
