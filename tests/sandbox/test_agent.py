"""The compute agent for real: a served agent on its Unix socket, starting real sandboxes,
keeping their state in the portal's database, and re-adopting them after its own restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.compute import ComputeError, DatasetMount, lifecycle, spec_to_json
from portal.compute.agent import Agent, socket_path
from portal.compute.client import AgentClient
from portal.compute.local import LocalBackend
from portal.models import Workload, trace_outbox
from tests.sandbox.conftest import GRANTED, serving_agent, spec
from vre.config import Config
from vre.outbox import Outbox


@pytest.fixture
def agent_parts(config: Config, make_app: Callable[[str], Flask]) -> Iterator[tuple]:
    tree = config.repository_path / "datasets" / "granted"
    tree.mkdir(parents=True)
    (tree / "slice.dcm").write_text("pixels")
    db = make_app("portal").extensions["vre.db"]
    ended: list[str] = []
    agent = Agent(config, db, LocalBackend(config), on_exit=lambda row: ended.append(row.id))
    path = socket_path(config)
    with serving_agent(agent, path) as served:
        yield agent, AgentClient(path), db, ended, served


def wait_state(client: AgentClient, workload_id: str, states: set[str]) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = client.show(workload_id)
        if shown["state"] in states:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"{workload_id} stayed {shown['state']}")


def test_start_show_logs_stop_through_the_socket(agent_parts: tuple) -> None:
    _agent, client, db, ended, _served = agent_parts
    workload = spec(["sh", "-c", "ls ~/datasets; echo started; sleep 300"], owner="u1")
    started = client.start(workload, "no-gpu", ["granted"], grant_id="g1")
    assert started["state"] == "running" and started["datasets"] == ["granted"]
    deadline = time.monotonic() + 10
    while b"started" not in client.logs(workload.workload_id)[0]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    data, offset = client.logs(workload.workload_id)
    assert b"Chest-CT" in data and offset == len(data)
    assert client.logs(workload.workload_id, offset)[0] == b""
    stopped = client.stop(workload.workload_id)
    # A job stopped (by anyone) ends cancelled; why is in its stop reason.
    assert stopped["state"] == "cancelled" and stopped["reason"] == "stopped"
    assert ended == [workload.workload_id]
    with db.session() as session:
        row = session.get(Workload, workload.workload_id)
        assert row.state == "cancelled" and row.ended_at is not None
        assert "token" not in row.spec


def test_a_workload_that_ends_by_itself_is_recorded(agent_parts: tuple) -> None:
    _agent, client, _, ended, _served = agent_parts
    workload = spec(["sh", "-c", "exit 3"])
    client.start(workload, "no-gpu", [])
    shown = wait_state(client, workload.workload_id, {"cancelled", "failed", "succeeded"})
    assert shown["state"] == "failed" and shown["exit_status"] == 3
    assert shown["reason"] == "exit status 3" and ended == [workload.workload_id]


def test_a_refused_start_is_failed_with_its_reason(agent_parts: tuple) -> None:
    _agent, client, _db, _, _served = agent_parts
    outside = DatasetMount(dataset_id="x", name="x", version="1.0", content_hash="0" * 64,
                           tree="datasets/../keys")
    workload = spec(["true"], mounts=(outside,))
    with pytest.raises(ComputeError) as refused:
        client.start(workload, "no-gpu", ["x"])
    assert refused.value.code == "mount_refused"
    assert client.show(workload.workload_id)["state"] == "failed"
    with pytest.raises(ComputeError) as unknown:
        client.show("w-nothing")
    assert unknown.value.code == "workload_unknown"
    with pytest.raises(ComputeError) as bad:
        client._json("POST", "/workloads", {"spec": {"kind": "desktop"}})
    assert bad.value.code == "bad_spec"


def test_a_restarted_agent_adopts_the_running_and_fails_the_vanished(
        agent_parts: tuple, config: Config) -> None:
    _agent, client, db, _, served = agent_parts
    alive = spec(["sleep", "300"], mounts=(GRANTED,))
    gone = spec(["sleep", "300"], mounts=(GRANTED,))
    client.start(alive, "no-gpu", ["granted"])
    state = client.start(gone, "no-gpu", ["granted"])
    with db.session() as session:
        keeper = session.get(Workload, gone.workload_id).backend_state["pid"]
    served.close()  # the agent goes down: nothing watches the workloads meanwhile
    os.killpg(keeper, signal.SIGKILL)  # the host lost it while no agent watched
    time.sleep(0.2)
    again = Agent(config, db, LocalBackend(config))
    found = again.reattach()
    assert found == {"adopted": [alive.workload_id], "vanished": [state["id"]]}
    shown = again.show(gone.workload_id)
    assert shown["state"] == "failed" and "vanished" in shown["reason"]
    assert again.show(alive.workload_id)["state"] == "running"
    again.stop(alive.workload_id, now=True)
    assert again.show(alive.workload_id)["state"] == "cancelled"


def test_only_the_platform_account_may_open_the_agent(agent_parts: tuple, config: Config) -> None:
    path: Path = socket_path(config)
    assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)")
    seen = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    assert seen.stdout.strip() == "PermissionError", seen


def test_a_desktop_whose_trace_would_be_refused_never_starts(agent_parts: tuple) -> None:
    agent, client, db, _, _served = agent_parts
    unhashed = DatasetMount(dataset_id="granted", name="Chest CT", version="1.0",
                            content_hash="not-a-hash", tree="datasets/granted")
    desktop = spec(["sleep", "300"], mounts=(unhashed,), kind="desktop")
    with pytest.raises(ComputeError) as refused:
        client.start(desktop, "desktop", ["granted"])
    assert refused.value.code == "bad_spec" and "traced" in refused.value.reason
    with db.session() as session:
        assert session.get(Workload, desktop.workload_id) is None
    assert not (agent.backend.root / desktop.workload_id).exists()


def test_the_lifecycle_calls_refuse_what_does_not_apply(agent_parts: tuple) -> None:
    _agent, client, _db, _, _served = agent_parts
    job = spec(["sleep", "300"])
    client.start(job, "no-gpu", ["granted"])
    with pytest.raises(ComputeError) as not_desktop:
        client.extend(job.workload_id)
    assert not_desktop.value.code == "desktop_not_running"
    with pytest.raises(ComputeError) as unknown:
        client.activity("w-nothing", True)
    assert unknown.value.code == "workload_unknown"
    with pytest.raises(ComputeError) as bad:
        client._json("POST", f"/workloads/{job.workload_id}/stop", {"reason": 7})
    assert bad.value.code == "bad_spec"
    never = spec(["true"])
    with pytest.raises(ComputeError) as bad_expiry:
        client._json("POST", "/workloads", {"spec": spec_to_json(never), "expires_in": -5})
    assert bad_expiry.value.code == "bad_spec" and "expires_in" in bad_expiry.value.reason
    with pytest.raises(ComputeError):
        client.show(never.workload_id)
    stopped = client.stop(job.workload_id, reason="owner_revoked", actor="admin-1")
    assert stopped["state"] == "cancelled" and stopped["stop_reason"] == "owner_revoked"


def test_a_tracer_outage_neither_blocks_nor_loses_a_desktops_traces(
        agent_parts: tuple, config: Config) -> None:
    """The tracer is replaced by a sender that fails as an unreachable one does (no tracer
    runs in this test; the site-wide lifecycle tests deliver to a real one)."""
    agent, client, db, _, _served = agent_parts
    delivered: list[dict] = []
    down = {"tracer": True}

    def send(traces: list[dict], timeout: float) -> list[dict]:
        if down["tracer"]:
            raise ConnectionError("the tracer does not answer")
        delivered.extend(traces)
        return [{"id": t["id"], "seq": i} for i, t in enumerate(traces)]

    agent.outbox = Outbox(db, trace_outbox, send, wait=0.2, retry=0.01)
    hashed = DatasetMount(dataset_id="granted", name="Chest CT", version="1.0",
                          content_hash="sha256:" + "ab" * 32, tree="datasets/granted")
    desktop = spec(["sleep", "300"], mounts=(hashed,), kind="desktop", image="vre/desktop:1")
    assert client.start(desktop, "desktop", ["granted"])["state"] == "running"
    stopped = client.stop(desktop.workload_id, reason="stopped_by_owner", actor=desktop.owner)
    assert stopped["state"] == "stopped"
    with db.session() as session:
        kept = [json.loads(t) for t in session.scalars(sa.select(trace_outbox.c.trace)
                                                       .order_by(trace_outbox.c.position))]
    assert [t["action"] for t in kept] == ["DESKTOP_STARTED", "DESKTOP_STOPPED"]
    assert kept[0]["datasets"] == [{"id": "granted", "hash": "sha256:" + "ab" * 32}]
    assert kept[1]["details"]["reason"] == "stopped_by_owner"

    down["tracer"] = False  # back: what waited is delivered, in order, once
    deadline = time.monotonic() + 30
    while len(delivered) < 2:
        assert time.monotonic() < deadline, delivered
        agent.outbox.drain()
        time.sleep(0.05)
    agent.outbox.stop()
    assert [t["id"] for t in delivered] == [t["id"] for t in kept]
    assert agent.outbox.pending() == 0


def test_an_agent_in_a_deep_data_directory_is_served_and_reached(
        config: Config, make_app: Callable[[str], Flask]) -> None:
    """The kernel takes at most 108 bytes of a socket's path; a data directory deeper than
    that still gets its agent, as an operator may put it anywhere."""
    deep = config.model_copy(update={"home": config.home / ("d" * 60) / ("e" * 60)})
    db = make_app("portal").extensions["vre.db"]
    path = socket_path(deep)
    assert len(str(path).encode()) > 108
    with serving_agent(Agent(deep, db, LocalBackend(deep)), path):
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
        assert AgentClient(path).capacity()["free_cpus"] > 0


def test_a_stop_answers_once_the_after_exit_work_of_an_end_seen_elsewhere_is_done(
        config: Config, make_app: Callable[[str], Flask]) -> None:
    """The poller may record a workload's end while someone stops it: the stop still answers
    only once the end's after-exit work (the grant ended) is done, not while it is under way."""
    db = make_app("portal").extensions["vre.db"]
    hooked: list[str] = []

    def slow_hook(row: Workload) -> None:
        time.sleep(1.0)  # a dataset service slow to end the grant
        hooked.append(row.id)

    agent = Agent(config, db, LocalBackend(config), on_exit=slow_hook)
    workload = spec(["sh", "-c", "exit 0"], mounts=())
    agent.start(workload, "no-gpu", [])
    deadline = time.monotonic() + 30
    while agent.backend.poll(workload.workload_id) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    poller = threading.Thread(target=agent.tick)  # as the agent's own polling thread
    poller.start()
    try:
        while True:
            with db.session() as session:
                if session.get(Workload, workload.workload_id).state == "succeeded":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert agent.stop(workload.workload_id)["state"] == "succeeded"
        assert hooked == [workload.workload_id]
    finally:
        poller.join(timeout=30)


class UnsteadyGrants:
    """The dataset service's open grants as the agent sees them; ending one closes it, but
    not while the service is down (`down`), when the call fails as an unreachable one does."""

    def __init__(self, *open_ids: str) -> None:
        self.open = set(open_ids)
        self.asked: list[str] = []
        self.down = True

    def revoked_owners(self) -> frozenset[str]:
        return frozenset()

    def open_grants(self) -> dict[str, lifecycle.OpenGrant]:
        return {grant_id: lifecycle.OpenGrant(grant_id) for grant_id in self.open}

    def end_grant(self, row: Workload) -> None:
        self.asked.append(row.grant_id)
        if self.down:
            raise ConnectionRefusedError("the dataset service could not be reached")
        self.open.discard(row.grant_id)


def test_a_grant_left_open_when_its_workload_ended_is_ended_later(
        config: Config, make_app: Callable[[str], Flask]) -> None:
    """The dataset service is down when a workload ends: its grant stays open only until the
    agent next reads the open grants with the service back; a running workload's grant and a
    grant of no workload of ours stay as they are."""
    db = make_app("portal").extensions["vre.db"]
    grants = UnsteadyGrants("g-ended", "g-running", "g-elsewhere")
    agent = Agent(config, db, LocalBackend(config), on_exit=grants.end_grant, watch=grants)
    ended = spec(["sh", "-c", "exit 0"], mounts=())
    running = spec(["sleep", "300"], mounts=())
    agent.start(ended, "no-gpu", [], grant_id="g-ended")
    agent.start(running, "no-gpu", [], grant_id="g-running")
    try:
        deadline = time.monotonic() + 30
        while ended.workload_id not in agent.tick():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert grants.asked == ["g-ended"] and "g-ended" in grants.open  # the call failed
        assert agent.watch_revocations() == []  # still down: asked again, still open
        assert grants.asked == ["g-ended"] * 2 and "g-ended" in grants.open
        grants.down = False
        agent.watch_revocations()
        assert grants.open == {"g-running", "g-elsewhere"}
        agent.watch_revocations()
        assert grants.asked == ["g-ended"] * 3  # nothing more to end
    finally:
        agent.stop(running.workload_id, now=True)
