"""The supervisor starts real processes in order and never leaves some of them running."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import free_port
from vre.supervisor import ProcessSpec, Supervisor, SupervisorError, read_status


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
