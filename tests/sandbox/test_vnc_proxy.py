"""The VNC proxy for real: a served proxy, a desktop in a launched sandbox, and WebSocket
clients that bring good, replayed, expired, foreign and forged tickets. Only the owner's
fresh ticket, offered as a subprotocol, reaches the screen, once; no ticket is logged."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from portal.compute.local import LocalBackend
from portal.vncproxy import TICKET_AUDIENCE, TICKET_PROTOCOL, VncProxy, issue_ticket
from tests.conftest import ISSUER
from tests.sandbox.conftest import serving_proxy
from tests.sandbox.rfb import RfbClient, WebSocketStream
from tests.sandbox.test_desktop_vnc import start_desktop
from vre.tokens import TokenIssuer, TokenValidator

pytestmark = pytest.mark.skipif(not shutil.which("Xvnc"), reason="needs TigerVNC's Xvnc")
ORIGIN = "http://portal.test"


@pytest.fixture
def reports() -> list[tuple[str, bool]]:
    """What the proxy reported of viewers: (workload id, input since the last report)."""
    return []


@pytest.fixture
def desk(compute: LocalBackend, issuer_dir: Path,
         reports: list[tuple[str, bool]]) -> Iterator[tuple[str, str]]:
    """A running desktop of alice's, behind a served proxy; answers (proxy URL, workload id)."""
    workload_id = start_desktop(compute)
    owners = {workload_id: "alice"}

    def locate(user_id: str, wid: str) -> Path | None:
        if owners.get(wid) != user_id or compute.poll(wid) is not None:
            return None
        return compute.vnc_socket(wid)

    validator = TokenValidator(ISSUER, TICKET_AUDIENCE, (issuer_dir / "jwks.json").as_uri())
    proxy = VncProxy(validator, locate, frozenset({ORIGIN}),
                     lambda wid, typed: reports.append((wid, typed)))
    with serving_proxy(proxy) as port:
        yield f"ws://127.0.0.1:{port}/vnc", workload_id


def open_screen(url: str, ticket: str, origin: str = ORIGIN) -> RfbClient:
    connection = connect(url, origin=origin, open_timeout=10,
                         subprotocols=["binary", TICKET_PROTOCOL + ticket])
    client = RfbClient(WebSocketStream(connection))
    client.handshake()
    return client


def refused(url: str, ticket: str, origin: str = ORIGIN) -> int:
    with pytest.raises(InvalidStatus) as answer:
        connect(url, origin=origin, open_timeout=10,
                subprotocols=["binary", TICKET_PROTOCOL + ticket] if ticket else ["binary"])
    return answer.value.response.status_code


def test_the_owners_fresh_ticket_opens_the_screen_once(desk: tuple, issuer: TokenIssuer) -> None:
    url, workload_id = desk
    ticket = issue_ticket(issuer, "alice", workload_id)
    client = open_screen(url, ticket)
    assert client.width > 0 and client.height > 0
    assert refused(url, ticket) == 401  # a ticket opens one connection


def test_tickets_that_must_not_open_anything(desk: tuple, issuer: TokenIssuer,
                                             rogue_issuer: TokenIssuer) -> None:
    url, workload_id = desk
    access_token, _ = issuer.issue("alice", ["researcher"])  # a normal token, not a ticket
    expired, _ = issuer.issue("alice", [], ttl=1, aud=TICKET_AUDIENCE, wid=workload_id,
                              iat=int(time.time()) - 120, nbf=int(time.time()) - 120,
                              exp=int(time.time()) - 60)
    assert refused(url, access_token) == 401
    assert refused(url, expired) == 401
    assert refused(url, issue_ticket(rogue_issuer, "alice", workload_id)) == 401
    assert refused(url, issue_ticket(issuer, "bob", workload_id)) == 403
    assert refused(url, issue_ticket(issuer, "alice", "w-other")) == 403
    assert refused(url, "") == 401
    assert refused(url, "x" * 5000) == 401
    assert refused(url, issue_ticket(issuer, "alice", workload_id), origin="http://evil.test") \
        == 403


def test_a_stopped_desktop_cannot_be_opened(desk: tuple, issuer: TokenIssuer,
                                            compute: LocalBackend) -> None:
    url, workload_id = desk
    compute.stop(workload_id, now=True)
    assert refused(url, issue_ticket(issuer, "alice", workload_id)) == 403


def test_an_open_screen_is_reported_with_its_input(desk: tuple, issuer: TokenIssuer,
                                                   reports: list[tuple[str, bool]]) -> None:
    url, workload_id = desk
    assert refused(url, issue_ticket(issuer, "bob", workload_id)) == 403
    assert reports == []  # a refused connection is no viewer
    open_screen(url, issue_ticket(issuer, "alice", workload_id))
    deadline = time.monotonic() + 30
    while (workload_id, True) not in reports:  # the handshake's bytes are input
        assert time.monotonic() < deadline, reports
        time.sleep(0.2)
    assert {wid for wid, _ in reports} == {workload_id}


def test_a_ticket_in_the_url_opens_nothing(desk: tuple, issuer: TokenIssuer) -> None:
    url, workload_id = desk
    ticket = issue_ticket(issuer, "alice", workload_id)
    with pytest.raises(InvalidStatus) as answer:
        connect(f"{url}?ticket={ticket}", origin=ORIGIN, subprotocols=["binary"],
                open_timeout=10)
    assert answer.value.response.status_code == 401
    assert open_screen(url, ticket).width > 0, "the ticket was not spent by the refusal"


def test_the_proxy_logs_no_ticket_and_no_screen(desk: tuple, issuer: TokenIssuer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    url, workload_id = desk
    caplog.set_level(logging.DEBUG)  # the most an operator could turn on
    ticket = issue_ticket(issuer, "alice", workload_id)
    screen = open_screen(url, ticket)
    assert screen.width > 0
    assert refused(url, ticket) == 401
    # The test's own client logs its side (websockets.client); the proxy's side is the rest.
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records
                       if not r.name.startswith("websockets.client"))
    assert "ticket_used" in logged, "the proxy's own decisions are logged"
    assert ticket not in logged and ticket.split(".")[2] not in logged
    assert [r.name for r in caplog.records if r.name.startswith("vre.vncproxy")
            and r.levelno < logging.INFO] == [], "no request headers, no relayed frames"
