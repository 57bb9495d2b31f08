"""The lifecycle of desktops for real: a researcher's desktop in a real sandbox, watched by a
real compute agent that reads the real dataset service and traces to the real tracer. It is
stopped when its owner is revoked, when a dataset it mounts is invalidated or its grant ends,
when its lifetime is reached (extensions move it, up to a cap), and when nobody uses it; each
start and stop reaches the ledger with the datasets' hashes and the reason."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from websockets.sync.client import connect

from dataset_service.client import DatasetClient
from dataset_service.models import Grant
from portal.catalogues import seed_defaults
from portal.compute.agent import Agent, PlatformWatch, socket_path
from portal.compute.local import LocalBackend
from portal.models import Flavor, Workload
from portal.vncproxy import TICKET_AUDIENCE, VncProxy, agent_locator, agent_reporter
from tests.conftest import ISSUER
from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import post, signed_in, site  # noqa: F401 - the fixture
from tests.sandbox.conftest import processes_named, serving_agent, serving_proxy
from tests.sandbox.rfb import RfbClient, WebSocketStream
from vre.revocation_feed import FeedClient
from vre.tokens import TokenValidator

pytestmark = pytest.mark.skipif(not shutil.which("Xvnc") or not shutil.which("bwrap"),
                                reason="needs bubblewrap and TigerVNC's Xvnc")

QUIET = {"desktop_idle_minutes": 600.0, "desktop_watch_seconds": 0.5}


@pytest.fixture
def lifecycle_site(site: dict[str, Any], platform: Any, issuer_dir: Path,  # noqa: F811
                   steward: dict[str, str]) -> Iterator[Callable[..., dict[str, Any]]]:
    """Start the agent (with the given settings) and the VNC proxy beside the site, with a
    released dataset to mount; everything ends with the test."""
    portal = site["portal"]
    held = contextlib.ExitStack()

    def start(**settings: Any) -> dict[str, Any]:
        with portal.extensions["vre.db"].session() as session:
            seed_defaults(session)
        config = portal.extensions["vre.config"].model_copy(update={**QUIET, **settings})
        tokens = portal.extensions["portal.service_token"]
        datasets_url = config.url_of("dataset_service")
        watch = PlatformWatch(portal.extensions["vre.db"], DatasetClient(datasets_url, tokens),
                              FeedClient(datasets_url, tokens, timeout=3.0))
        agent = Agent(config, portal.extensions["vre.db"], LocalBackend(config),
                      on_exit=watch.end_grant, outbox=portal.extensions["vre.outbox"],
                      watch=watch)
        validator = TokenValidator(ISSUER, TICKET_AUDIENCE, (issuer_dir / "jwks.json").as_uri())
        proxy = VncProxy(validator, agent_locator(config), frozenset({"http://portal.test"}),
                         agent_reporter(config))
        held.enter_context(serving_agent(agent, socket_path(config)))
        port = held.enter_context(serving_proxy(proxy))
        dataset = create(site["datasets"], steward)
        released = site["datasets"].test_client().post(
            f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
        assert released.status_code == 200, released.get_json()
        return {**site, "agent": agent, "dataset": released.get_json(),
                "proxy_port": port, "auditor": platform[1]}

    with held:
        yield start


def start_desktop(life: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    answer = life["portal"].test_client().post("/api/v1/desktops", headers=headers, json={
        "flavor": "desktop", "datasets": [life["dataset"]["id"]]})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def wait_for(life: dict[str, Any], headers: dict[str, str], desktop_id: str,
             done: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
    client = life["portal"].test_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = client.get(f"/api/v1/desktops/{desktop_id}", headers=headers).get_json()
        if done(shown):
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{desktop_id} never got there: {shown}")


def ready(shown: dict[str, Any]) -> bool:
    assert shown["state"] in ("starting", "running"), shown
    return any(p["message"] == "desktop ready" for p in shown.get("progress") or [])


def ended(shown: dict[str, Any]) -> bool:
    return shown["state"] in ("stopped", "failed")


def traces_of(life: dict[str, Any], desktop_id: str, count: int) -> list[dict[str, Any]]:
    """The desktop's traces in the ledger, once `count` of them have arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [t for t in life["auditor"].query(dataset=life["dataset"]["id"])
                 if t["action"].startswith("DESKTOP_")
                 and t["details"].get("workload_id") == desktop_id]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"the ledger holds {found} for {desktop_id}")


def open_grants(life: dict[str, Any], desktop_id: str) -> list[Grant]:
    with life["datasets"].extensions["vre.db"].session() as session:
        return list(session.scalars(sa.select(Grant).where(
            Grant.workload_id == desktop_id, Grant.ended_at.is_(None))))


def grant_ends(life: dict[str, Any], desktop_id: str) -> None:
    """Wait for the desktop's grant to end: the agent ends it after recording the stop."""
    deadline = time.monotonic() + 30
    while open_grants(life, desktop_id):
        assert time.monotonic() < deadline, f"the grant of {desktop_id} stays open"
        time.sleep(0.2)


def log_of(life: dict[str, Any], desktop_id: str) -> str:
    return life["agent"].backend.logs(desktop_id)[0].decode(errors="replace")


def test_start_and_stop_are_traced_with_the_mounted_hashes_and_the_reason(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site()
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    wait_for(life, alice, desktop["id"], ready)
    stopped = life["portal"].test_client().delete(f"/api/v1/desktops/{desktop['id']}",
                                                  headers=alice).get_json()
    assert stopped["state"] == "stopped" and stopped["stop_reason"] == "stopped_by_owner"
    started, ended_trace = traces_of(life, desktop["id"], 2)
    mounted = [{"id": life["dataset"]["id"], "hash": life["dataset"]["content_hash"]}]
    assert started["action"] == "DESKTOP_STARTED" and started["actor"] == "res-1"
    assert started["datasets"] == mounted
    assert started["details"] == {"workload_id": desktop["id"], "subject_user": "res-1",
                                  "tool": "desktop", "image": started["details"]["image"],
                                  "flavor": "desktop"}
    assert started["details"]["image"]
    assert ended_trace["action"] == "DESKTOP_STOPPED" and ended_trace["datasets"] == mounted
    assert ended_trace["details"]["reason"] == "stopped_by_owner"
    assert ended_trace["actor"] == "res-1"


def test_an_administrator_stopping_it_is_named_as_such(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site()
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    admin = auth(token("admin-1", "admin"))
    stopped = life["portal"].test_client().delete(f"/api/v1/desktops/{desktop['id']}",
                                                  headers=admin).get_json()
    assert stopped["stop_reason"] == "stopped_by_admin"
    trace = traces_of(life, desktop["id"], 2)[1]
    assert trace["actor"] == "admin-1" and trace["details"]["reason"] == "stopped_by_admin"
    assert trace["details"]["subject_user"] == "res-1"


@pytest.mark.parametrize("revoke", ["dataset_service", "portal_account"])
def test_revoking_the_owner_stops_their_running_desktops(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str],
        revoke: str) -> None:
    life = lifecycle_site()
    alice = auth(token("res-1", "researcher"))
    theirs = [start_desktop(life, alice)["id"]]
    bystander = auth(token("steward-1", "researcher", "steward"))
    other = start_desktop(life, bystander)["id"]
    if revoke == "dataset_service":
        answer = life["datasets"].test_client().put(
            "/api/v1/revoked-users/res-1", headers=auth(token("admin-1", "admin")),
            json={"reason": "left the project"})
        assert answer.status_code == 200, answer.get_json()
    else:
        answer = post(signed_in(life["portal"], "admin-1"), "/admin/users/res-1/active",
                      {"active": "0"})
        assert answer.status_code == 302
    # the owner's own token is refused now, so an administrator looks
    admin = auth(token("admin-1", "admin"))
    for desktop_id in theirs:
        shown = wait_for(life, admin, desktop_id, ended)
        assert shown["state"] == "stopped" and shown["stop_reason"] == "owner_revoked"
        grant_ends(life, desktop_id)
        assert traces_of(life, desktop_id, 2)[1]["details"]["reason"] == "owner_revoked"
    assert life["portal"].test_client().get(
        f"/api/v1/desktops/{other}", headers=bystander).get_json()["state"] == "running"


@pytest.mark.parametrize("withdraw", ["invalidate", "end_grant"])
def test_invalidating_its_data_or_ending_its_grant_stops_the_desktop(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str],
        steward: dict[str, str], withdraw: str) -> None:
    life = lifecycle_site()
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    # Running with its data mounted: invalidation retires the dataset's tree at once, and a
    # sandbox still mounting it would fail instead of being stopped.
    wait_for(life, alice, desktop["id"], ready)
    datasets = life["datasets"].test_client()
    if withdraw == "invalidate":
        answer = datasets.post(f"/api/v1/datasets/{life['dataset']['id']}/invalidate",
                               headers=steward, json={"reason": "consent withdrawn"})
        expected = "dataset_invalidated"
    else:
        answer = datasets.delete(f"/api/v1/grants/{desktop['grant_id']}",
                                 headers=auth(token("service:portal", "service")))
        expected = "grant_ended"
    assert answer.status_code == 200, answer.get_json()
    shown = wait_for(life, alice, desktop["id"], ended)
    assert shown["state"] == "stopped" and shown["stop_reason"] == expected, (
        shown["reason"], shown["stop_reason"])
    grant_ends(life, desktop["id"])
    assert traces_of(life, desktop["id"], 2)[1]["details"]["reason"] == expected


def test_the_open_grants_are_for_services_only(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site()
    datasets = life["datasets"].test_client()
    for who in ("res-1", "steward-1"):
        answer = datasets.get("/api/v1/grants/open", headers=auth(token(who, "steward")))
        assert answer.status_code == 403, answer.get_json()
    assert datasets.get("/api/v1/grants/open").status_code == 401


def test_extensions_move_the_expiry_up_to_the_cap_and_it_stops_there(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site(desktop_max_lifetime_hours=3.0, desktop_extend_minutes=60.0)
    with life["portal"].extensions["vre.db"].session() as session:
        session.get(Flavor, "desktop").max_runtime_minutes = 90
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    client = life["portal"].test_client()
    started = datetime.fromisoformat(desktop["started_at"])
    assert datetime.fromisoformat(desktop["expires_at"]) == started + timedelta(minutes=90)
    with life["portal"].extensions["vre.db"].session() as session:
        spec = session.get(Workload, desktop["id"]).spec
    # the sandbox's own hard limit is the cap (the agent keeps the moving expiry), so an
    # extended desktop is not cut short by the flavor's run time
    assert spec["resources"]["max_runtime_seconds"] >= 24 * 3600

    path = f"/api/v1/desktops/{desktop['id']}/extend"
    others = {"someone": auth(token("someone", "researcher")),
              "admin": auth(token("admin-1", "admin"))}
    assert client.post(path, headers=others["someone"]).status_code == 404
    refused = client.post(path, headers=others["admin"])
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "not_the_owner"
    first = client.post(path, headers=alice).get_json()
    assert datetime.fromisoformat(first["expires_at"]) == started + timedelta(minutes=150)
    second = client.post(path, headers=alice).get_json()
    assert datetime.fromisoformat(second["expires_at"]) == started + timedelta(hours=3)
    past = client.post(path, headers=alice)
    assert past.status_code == 409 and past.get_json()["error"]["code"] == "lifetime_limit"
    assert client.get(f"/api/v1/desktops/{desktop['id']}",
                      headers=alice).get_json()["expires_at"] == second["expires_at"]

    # the agent, asked as if the expiry had come, stops it for its lifetime
    agent: Agent = life["agent"]
    assert agent.keep_deadlines(now=datetime.fromisoformat(second["expires_at"])) == \
        [desktop["id"]]
    shown = wait_for(life, alice, desktop["id"], ended)
    assert shown["state"] == "stopped" and shown["stop_reason"] == "max_lifetime"
    assert traces_of(life, desktop["id"], 2)[1]["details"]["reason"] == "max_lifetime"
    late = client.post(path, headers=alice)
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "desktop_not_running"


def test_a_desktop_past_its_expiry_is_stopped_by_the_agent(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site(desktop_max_lifetime_hours=0.002)  # about 7 seconds
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    shown = wait_for(life, alice, desktop["id"], ended)
    assert shown["state"] == "stopped" and shown["stop_reason"] == "max_lifetime"


def open_screen(life: dict[str, Any], headers: dict[str, str], desktop_id: str) -> Any:
    ticket = life["portal"].test_client().post(f"/api/v1/desktops/{desktop_id}/ticket",
                                               headers=headers).get_json()
    url = ticket["url"].replace(ticket["url"].split("/vnc")[0],
                                f"ws://127.0.0.1:{life['proxy_port']}")
    return connect(url, origin="http://portal.test", open_timeout=10,
                   subprotocols=["binary", ticket["protocol"]])


def test_an_idle_desktop_is_warned_and_a_viewer_clears_the_warning(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site(desktop_idle_minutes=0.05, desktop_idle_grace_minutes=600.0)
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    assert desktop["idle_warning_at"] is None and desktop["last_activity_at"] is None
    warned = wait_for(life, alice, desktop["id"], lambda d: d["idle_warning_at"] is not None)
    assert warned["state"] == "running"
    assert datetime.fromisoformat(warned["culls_at"]) == \
        datetime.fromisoformat(warned["idle_warning_at"]) + timedelta(minutes=600)
    deadline = time.monotonic() + 30
    while "desktop: notice shown" not in log_of(life, desktop["id"]):
        assert time.monotonic() < deadline, log_of(life, desktop["id"])
        time.sleep(0.2)

    with open_screen(life, alice, desktop["id"]) as connection:
        screen = RfbClient(WebSocketStream(connection))
        screen.handshake()
        cleared = wait_for(life, alice, desktop["id"],
                           lambda d: d["idle_warning_at"] is None)
        assert cleared["culls_at"] is None and cleared["last_activity_at"] is not None
        assert cleared["state"] == "running"
        deadline = time.monotonic() + 30
        while "desktop: notice cleared" not in log_of(life, desktop["id"]):
            assert time.monotonic() < deadline, log_of(life, desktop["id"])
            time.sleep(0.2)


def test_an_idle_desktop_is_stopped_after_its_grace(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site(desktop_idle_minutes=0.05, desktop_idle_grace_minutes=0.05)
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    shown = wait_for(life, alice, desktop["id"], ended)
    assert shown["state"] == "stopped" and shown["stop_reason"] == "idle"
    assert shown["idle_warning_at"] is None
    grant_ends(life, desktop["id"])
    assert traces_of(life, desktop["id"], 2)[1]["details"]["reason"] == "idle"


def test_a_crashed_vnc_server_shows_the_desktop_failed_with_its_reason(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site()
    alice = auth(token("res-1", "researcher"))
    desktop = start_desktop(life, alice)
    wait_for(life, alice, desktop["id"], ready)
    with life["portal"].extensions["vre.db"].session() as session:
        keeper = session.get(Workload, desktop["id"]).backend_state["pid"]
    servers = processes_named(keeper, "Xvnc")
    assert len(servers) == 1, servers
    os.kill(servers[0], signal.SIGKILL)
    shown = wait_for(life, alice, desktop["id"], ended)
    assert shown["state"] == "failed" and shown["stop_reason"].startswith("failed: "), shown
    assert "exit status" in shown["stop_reason"], shown
    assert "the VNC server ended" in log_of(life, desktop["id"])
    grant_ends(life, desktop["id"])
    assert traces_of(life, desktop["id"], 2)[1]["details"]["reason"] == shown["stop_reason"]


def test_restart_gives_a_fresh_desktop_and_forget_takes_the_old_off_the_list(
        lifecycle_site: Callable[..., dict[str, Any]], token: Callable[..., str]) -> None:
    life = lifecycle_site()
    client = life["portal"].test_client()
    alice = auth(token("res-1", "researcher"))
    old = start_desktop(life, alice)
    path = f"/api/v1/desktops/{old['id']}"
    running = client.post(f"{path}/forget", headers=alice)
    assert running.status_code == 409 and running.get_json()["error"]["code"] == \
        "desktop_running"
    assert client.post(f"{path}/restart",
                       headers=auth(token("someone", "researcher"))).status_code == 404
    assert client.post(f"{path}/restart",
                       headers=auth(token("admin-1", "admin"))).status_code == 403

    answer = client.post(f"{path}/restart", headers=alice)
    assert answer.status_code == 201, answer.get_json()
    fresh = answer.get_json()
    assert fresh["id"] != old["id"] and fresh["grant_id"] != old["grant_id"]
    assert (fresh["application"], fresh["flavor"], fresh["datasets"]) == \
        (old["application"], old["flavor"], old["datasets"])
    assert fresh["state"] == "running" and len(open_grants(life, fresh["id"])) == 1
    before = client.get(path, headers=alice).get_json()
    assert before["state"] == "stopped" and before["stop_reason"] == "restarted"
    assert open_grants(life, old["id"]) == []
    assert traces_of(life, old["id"], 2)[1]["details"]["reason"] == "restarted"
    assert traces_of(life, fresh["id"], 1)[0]["action"] == "DESKTOP_STARTED"

    listed = [d["id"] for d in client.get("/api/v1/desktops", headers=alice).get_json()[
        "desktops"]]
    assert listed == [fresh["id"], old["id"]]
    assert client.post(f"{path}/forget", headers=auth(token("admin-1", "admin"))
                       ).status_code == 403
    forgotten = client.post(f"{path}/forget", headers=alice)
    assert forgotten.status_code == 200 and forgotten.get_json() == {"id": old["id"],
                                                                    "forgotten": True}
    listed = [d["id"] for d in client.get("/api/v1/desktops", headers=alice).get_json()[
        "desktops"]]
    assert listed == [fresh["id"]]
