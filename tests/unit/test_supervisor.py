"""The supervisor starts real processes in order and never leaves some of them running."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from launcher.supervisor import ProcessSpec, Supervisor, SupervisorError, read_status
from tests.helpers import free_port


def http_server(port: int) -> ProcessSpec:
    return ProcessSpec("web", [sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1"], ready_url=f"http://127.0.0.1:{port}/",
                       ready_timeout=20, port=port)


def test_a_failing_process_stops_the_ones_already_started(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.lock()
    sup.start(http_server(free_port()))
    first = sup.running[0].process
    crashing = ProcessSpec("crash", [sys.executable, "-c", "import sys; print('boom'); "
                                     "sys.exit(3)"], ready_url="http://127.0.0.1:1/")
    with pytest.raises(SupervisorError, match=r"crash exited with status 3.*boom"):
        sup.start(crashing)
    sup.stop_all()
    assert first.poll() is not None, "the process started first is stopped too"
    assert read_status(tmp_path) == (None, [])


def test_a_process_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    slow = ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                       ready_url="http://127.0.0.1:1/", ready_timeout=1)
    with pytest.raises(SupervisorError, match="did not become ready"):
        sup.start(slow)
    sup.stop_all()


def test_one_supervisor_per_data_directory(tmp_path: Path) -> None:
    first = Supervisor(tmp_path)
    first.lock()
    with pytest.raises(SupervisorError, match="already running"):
        Supervisor(tmp_path).lock()


def test_status_reports_running_processes(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start(http_server(free_port()))
    try:
        state, statuses = read_status(tmp_path)
        assert state is not None
        assert [(s.name, s.health) for s in statuses] == [("web", "ready")]
    finally:
        sup.stop_all()


def test_a_process_that_dies_is_restarted_with_back_off_while_the_others_keep_running(
        tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start(http_server(free_port()))
    web = sup.running[0].process
    sup.start(ProcessSpec("flaky", [sys.executable, "-c", "import time; time.sleep(0.1)"]))
    events: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while sup.running[1].restarts < 3 and time.monotonic() < deadline:
            sup.tend(events.append)
            time.sleep(0.05)
        assert sup.running[1].restarts == 3, events
        # Each quick death doubles the wait before the next start.
        delays = [e.split("restarting in ")[1].split(" s")[0] for e in events if "in " in e]
        assert delays == ["0.5", "1", "2"], events
        assert web.poll() is None and sup.running[0].process is web, "the others go on"
        state, statuses = read_status(tmp_path)
        assert state is not None
        assert [(s.name, s.restarts) for s in statuses] == [("web", 0), ("flaky", 3)]
    finally:
        sup.stop_all()


def test_status_shows_a_frozen_process_as_not_answering(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start(http_server(free_port()))
    pid = sup.running[0].process.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            _, statuses = read_status(tmp_path)
        finally:
            os.kill(pid, signal.SIGCONT)
        # Alive, yet unhealthy: seen stopped, or asked and silent.
        assert [(s.name, s.alive) for s in statuses] == [("web", True)]
        assert statuses[0].health.startswith("not answering"), statuses
        assert [s.health for s in read_status(tmp_path)[1]] == ["ready"]
    finally:
        sup.stop_all()
