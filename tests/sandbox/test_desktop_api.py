"""Desktops end to end through the portal's API: a researcher starts a desktop on a released
dataset, the compute agent launches a real sandbox, a ticket opens its screen through the real
VNC proxy, and stopping it ends the grant. Every refusal leaves nothing running or granted."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from websockets.sync.client import connect

from dataset_service.models import Grant
from portal.catalogues import ApplicationIn, create_application, seed_defaults
from portal.compute.agent import Agent, socket_path
from portal.compute.local import LocalBackend
from portal.models import RevokedWorkload, Workload
from portal.vncproxy import TICKET_AUDIENCE, VncProxy, agent_locator
from tests.conftest import ISSUER
from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import site  # noqa: F401 - the fixture
from tests.sandbox.conftest import serving_agent, serving_proxy
from tests.sandbox.rfb import RfbClient, WebSocketStream
from vre.tokens import TokenValidator

pytestmark = pytest.mark.skipif(not shutil.which("Xvnc") or not shutil.which("bwrap"),
                                reason="needs bubblewrap and TigerVNC's Xvnc")


@pytest.fixture
def desks(site: dict[str, Any], config, issuer_dir, steward) -> Iterator[dict[str, Any]]:  # noqa: F811
    portal = site["portal"]
    with portal.extensions["vre.db"].session() as session:
        seed_defaults(session)
    portal_config = portal.extensions.get("vre.config", config)
    agent = Agent(portal_config, portal.extensions["vre.db"], LocalBackend(portal_config))
    validator = TokenValidator(ISSUER, TICKET_AUDIENCE, (issuer_dir / "jwks.json").as_uri())
    proxy = VncProxy(validator, agent_locator(portal_config), frozenset({"http://portal.test"}))
    with serving_agent(agent, socket_path(portal_config)), serving_proxy(proxy) as port:
        dataset = create(site["datasets"], steward)
        released = site["datasets"].test_client().post(
            f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
        assert released.status_code == 200, released.get_json()
        yield {**site, "agent": agent, "dataset": dataset, "proxy_port": port}


def as_user(token: Callable[..., str], user: str, *roles: str) -> dict[str, str]:
    return auth(token(user, *(roles or ("researcher",))))


def wait_vnc(client, headers: dict[str, str], desktop_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = client.get(f"/api/v1/desktops/{desktop_id}", headers=headers).get_json()
        if any(p["message"] == "desktop ready" for p in shown.get("progress", [])):
            return shown
        assert shown["state"] == "running", shown
        time.sleep(0.2)
    raise AssertionError("the desktop did not become ready")


def grants_open(desks: dict[str, Any], workload_id: str) -> list[Grant]:
    with desks["datasets"].extensions["vre.db"].session() as session:
        return list(session.scalars(sa.select(Grant).where(
            Grant.workload_id == workload_id, Grant.ended_at.is_(None))))


def test_a_researcher_opens_a_desktop_and_stops_it(desks: dict[str, Any], token) -> None:
    client = desks["portal"].test_client()
    alice = as_user(token, "res-1")
    started = client.post("/api/v1/desktops", headers=alice, json={
        "flavor": "desktop", "datasets": [desks["dataset"]["id"]]})
    assert started.status_code == 201, started.get_json()
    desktop = started.get_json()
    assert desktop["state"] == "running" and desktop["datasets"] == [desks["dataset"]["id"]]
    assert len(grants_open(desks, desktop["id"])) == 1
    wait_vnc(client, alice, desktop["id"])
    listed = client.get("/api/v1/desktops", headers=alice).get_json()["desktops"]
    assert [d["id"] for d in listed] == [desktop["id"]]

    ticket = client.post(f"/api/v1/desktops/{desktop['id']}/ticket", headers=alice).get_json()
    assert ticket["protocol"].split(".", 1)[1] not in ticket["url"], "no ticket in a URL"
    url = ticket["url"].replace(ticket["url"].split("/vnc")[0],
                                f"ws://127.0.0.1:{desks['proxy_port']}")
    with connect(url, origin="http://portal.test", open_timeout=10,
                 subprotocols=["binary", ticket["protocol"]]) as connection:
        screen = RfbClient(WebSocketStream(connection))
        screen.handshake()
        assert screen.width > 0

    others = as_user(token, "someone")
    assert client.get(f"/api/v1/desktops/{desktop['id']}", headers=others).status_code == 404
    assert client.delete(f"/api/v1/desktops/{desktop['id']}", headers=others).status_code == 404
    assert client.post(f"/api/v1/desktops/{desktop['id']}/ticket",
                       headers=others).status_code == 404

    stopped = client.delete(f"/api/v1/desktops/{desktop['id']}", headers=alice)
    assert stopped.status_code == 200 and stopped.get_json()["state"] == "stopped"
    assert grants_open(desks, desktop["id"]) == []
    with desks["portal"].extensions["vre.db"].session() as session:
        assert session.get(RevokedWorkload, desktop["id"]) is not None  # its token is dead
    late = client.post(f"/api/v1/desktops/{desktop['id']}/ticket", headers=alice)
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "desktop_not_running"


def test_refusals_start_nothing_and_grant_nothing(desks: dict[str, Any], token,
                                                  steward) -> None:
    client = desks["portal"].test_client()
    alice = as_user(token, "res-1")
    draft = create(desks["datasets"], steward)
    # A desktop only a cluster could run (no local command), and one naming a session the
    # platform does not have: the second is refused by the backend, after its grant, which
    # then ends with it.
    with desks["portal"].extensions["vre.db"].session() as session:
        for app_id, local in (("remote-only", []), ("no-session", ["session:no-such"])):
            create_application(session, ApplicationIn(
                id=app_id, name=app_id, kind="desktop", image="vre/desktop:9",
                local_command=local))
    cases = [
        ({"flavor": "desktop", "application": "remote-only",
          "datasets": [desks["dataset"]["id"]]}, alice, 422, "application_not_local"),
        ({"flavor": "desktop", "application": "no-session",
          "datasets": [desks["dataset"]["id"]]}, alice, 422, "application_not_local"),
        ({"flavor": "no-such", "datasets": [desks["dataset"]["id"]]}, alice, 422,
         "flavor_unknown"),
        ({"flavor": "desktop", "datasets": [draft["id"]]}, alice, 403, "grant_refused"),
        ({"flavor": "desktop", "datasets": ["no-such-dataset"]}, alice, 403, "grant_refused"),
        ({"flavor": "desktop", "application": "pytorch",
          "datasets": [desks["dataset"]["id"]]}, alice, 422, "application_unavailable"),
        ({"flavor": "small-gpu", "datasets": [desks["dataset"]["id"]]}, alice, 422,
         "exceeds_host"),
        ({"flavor": "desktop", "datasets": [desks["dataset"]["id"]]},
         auth(token("service:tracer", "service")), 403, "not_a_person"),
        ({"flavor": "desktop", "datasets": []}, alice, 422, None),
    ]
    for body, headers, status, code in cases:
        answer = client.post("/api/v1/desktops", headers=headers, json=body)
        assert answer.status_code == status, (body, answer.get_json())
        if code:
            assert answer.get_json()["error"]["code"] == code, (body, answer.get_json())
    with desks["portal"].extensions["vre.db"].session() as session:
        started = session.scalars(sa.select(Workload)).all()
        # The backend's refusal is recorded as a failed start; nothing else was started.
        assert [(w.application, w.state) for w in started] == [("no-session", "failed")]
    with desks["datasets"].extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Grant).where(
            Grant.ended_at.is_(None))) == 0


def test_the_quota_of_desktops_is_kept(desks: dict[str, Any], token) -> None:
    client = desks["portal"].test_client()
    alice = as_user(token, "res-1")
    body = {"flavor": "desktop", "datasets": [desks["dataset"]["id"]]}
    started = []
    for _ in range(2):  # the default quota: two desktops a user
        answer = client.post("/api/v1/desktops", headers=alice, json=body)
        assert answer.status_code == 201, answer.get_json()
        started.append(answer.get_json()["id"])
    third = client.post("/api/v1/desktops", headers=alice, json=body)
    assert third.status_code == 409 and third.get_json()["error"]["code"] == "quota_desktops"
    for desktop_id in started:
        client.delete(f"/api/v1/desktops/{desktop_id}", headers=alice)
    assert client.post("/api/v1/desktops", headers=alice, json=body).status_code == 201
