"""The desktops' VNC proxy: the only way to a desktop's screen. A browser (noVNC) opens a
WebSocket with a ticket the portal issued to the desktop's owner; the proxy checks it and
relays bytes to that desktop's VNC socket, which nothing else may open.

A ticket is a JWT signed by the portal for the audience `vre-vnc`: who (`sub`), which
desktop (`wid`), valid for seconds and usable once. It travels as an offered WebSocket
subprotocol (`vre-ticket.<ticket>`, beside noVNC's `binary`), never in the URL, so no access
log of a proxy or browser on the way keeps it. The desktop is looked up anew at every
connection (still running, still its owner's), and each connection keeps its own target, so
no connection can be steered to another desktop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from portal.compute.lifecycle import ACTIVITY_REPORT_SECONDS
from vre.client import connect_unix
from vre.tokens import TokenError, TokenIssuer, TokenValidator

log = logging.getLogger("vre.vncproxy")
TICKET_AUDIENCE = "vre-vnc"
TICKET_SECONDS = 30
TICKET_PROTOCOL = "vre-ticket."
MAX_TICKET_CHARS = 4096
CHUNK = 1 << 16

# Answers where a user's running desktop listens, or None when it is not theirs or not running.
Locate = Callable[[str, str], Path | None]
# Tells the compute agent a viewer of a desktop is connected, and whether input arrived since
# the last report; called every few seconds while a connection is open (the idle culling).
Report = Callable[[str, bool], None]


def issue_ticket(issuer: TokenIssuer, user_id: str, workload_id: str) -> str:
    """A single-use ticket for one user to open one desktop, valid for a few seconds."""
    token, _ = issuer.issue(user_id, [], ttl=TICKET_SECONDS, aud=TICKET_AUDIENCE,
                            wid=workload_id)
    return token


def proxy_url(config: object) -> str:
    """Where browsers open desktops' screens: the proxy's WebSocket URL, ticket not included."""
    return f"ws://{config.host}:{config.vnc_proxy_port}/vnc"  # type: ignore[attr-defined]


def offered_tickets(headers: Headers) -> list[str]:
    """The tickets a client offered as `vre-ticket.<ticket>` subprotocols."""
    offered = (p.strip() for line in headers.get_all("Sec-WebSocket-Protocol")
               for p in line.split(","))
    return [p[len(TICKET_PROTOCOL):] for p in offered if p.startswith(TICKET_PROTOCOL)]


class TicketBook:
    """Tickets already used, kept until they expire, so a ticket opens one connection."""

    def __init__(self) -> None:
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def use(self, jti: str, expires: float) -> bool:
        """Record a ticket's use; False when it was used before."""
        now = time.time()
        with self._lock:
            self._used = {k: v for k, v in self._used.items() if v > now}
            if jti in self._used:
                return False
            self._used[jti] = expires
            return True


class Refusal(Exception):
    """Why a connection is not let through: an HTTP status and a stable code."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


class VncProxy:
    """Checks tickets and relays each admitted connection to its own desktop."""

    def __init__(self, validator: TokenValidator, locate: Locate,
                 allowed_origins: frozenset[str], report: Report | None = None) -> None:
        self.validator = validator
        self.locate = locate
        self.allowed_origins = allowed_origins
        self.report = report
        self.tickets = TicketBook()

    def admit(self, path: str, headers: Headers) -> Path:
        """The VNC socket a request may reach, or a `Refusal`."""
        return self._admit(path, headers)[1]

    def _admit(self, path: str, headers: Headers) -> tuple[str, Path]:
        """The desktop a request may reach and its VNC socket, or a `Refusal`."""
        origin = headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins:
            raise Refusal(403, "origin_refused")
        url = urlsplit(path)
        if url.path != "/vnc":
            raise Refusal(404, "not_found")
        tickets = offered_tickets(headers)
        if len(tickets) != 1 or not tickets[0] or len(tickets[0]) > MAX_TICKET_CHARS:
            raise Refusal(401, "ticket_missing")
        try:
            principal = self.validator.validate(tickets[0])
        except TokenError as exc:
            raise Refusal(401, exc.code if exc.code == "token_expired" else "ticket_invalid") \
                from None
        claims = principal.claims
        workload_id, jti = claims.get("wid"), claims.get("jti")
        if not isinstance(workload_id, str) or not isinstance(jti, str):
            raise Refusal(401, "ticket_invalid")
        if not self.tickets.use(jti, float(claims["exp"])):
            raise Refusal(401, "ticket_used")
        target = self.locate(principal.subject, workload_id)
        if target is None:
            raise Refusal(403, "desktop_unavailable")
        return workload_id, target

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            connection.vnc_workload, connection.vnc_target = self._admit(  # type: ignore[attr-defined]
                request.path, request.headers)
        except Refusal as refused:
            log.info("vnc connection refused: %s", refused.code)
            return connection.respond(refused.status, refused.code + "\n")
        return None

    async def _relay(self, connection: ServerConnection) -> None:
        target: Path = connection.vnc_target  # type: ignore[attr-defined]
        try:
            sock = connect_unix(target)
            sock.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except OSError:
            await connection.close(1011, "desktop_unreachable")
            return

        typed = [False]

        async def upstream() -> None:
            async for message in connection:
                typed[0] = True
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()

        async def downstream() -> None:
            while data := await reader.read(CHUNK):
                await connection.send(data)

        async def reporting() -> None:
            workload_id: str = connection.vnc_workload  # type: ignore[attr-defined]
            while self.report is not None:
                seen, typed[0] = typed[0], False
                try:
                    await asyncio.to_thread(self.report, workload_id, seen)
                except Exception as exc:  # a missed report only makes the desktop look idle
                    log.warning("cannot report activity of %s: %s", workload_id, exc)
                await asyncio.sleep(ACTIVITY_REPORT_SECONDS)
            await asyncio.Event().wait()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream()),
                 asyncio.create_task(reporting())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            await connection.close()

    def serve(self, host: str, port: int) -> Server:
        """A server for the proxy (start it with `async with`, or `serve_forever`)."""
        return serve(self._relay, host, port, process_request=self._process_request,
                     select_subprotocol=_binary_if_offered, max_size=1 << 20,
                     compression=None, logger=_wire_log())


def _wire_log() -> logging.Logger:
    """The WebSocket library's logger, held at INFO: its debug lines print request headers
    (the ticket) and every frame (screens and keystrokes)."""
    wire = logging.getLogger("vre.vncproxy.wire")
    wire.setLevel(logging.INFO)
    return wire


def _binary_if_offered(connection: ServerConnection, offered: list[str]) -> str | None:
    """noVNC offers the `binary` subprotocol; a client that offers none is served as well."""
    return "binary" if "binary" in offered else None


def agent_locator(config: object) -> Locate:
    """Desktops as the compute agent knows them: the owner's, running, with a VNC socket."""
    from portal.compute import ComputeError
    from portal.compute.agent import socket_path
    from portal.compute.client import AgentClient

    agent = AgentClient(socket_path(config), timeout=10)  # type: ignore[arg-type]

    def locate(user_id: str, workload_id: str) -> Path | None:
        try:
            shown = agent.show(workload_id)
        except ComputeError:
            return None
        if shown.get("owner_id") != user_id or shown.get("kind") != "desktop":
            return None
        if shown.get("state") != "running" or not shown.get("vnc_socket"):
            return None
        return Path(shown["vnc_socket"])

    return locate


def agent_reporter(config: object) -> Report:
    """Activity reports to the compute agent, which records them for the idle culling."""
    from portal.compute.agent import socket_path
    from portal.compute.client import AgentClient

    return AgentClient(socket_path(config), timeout=10).activity  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """`python -m portal.vncproxy`: the process `vre up` starts."""
    from vre.config import load_config

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    config = load_config()
    portal = urlsplit(config.url_of("portal"))
    # Tickets come from the portal alone, whoever signs people in.
    proxy = VncProxy(TokenValidator(config.portal_issuer, TICKET_AUDIENCE, config.portal_jwks),
                     agent_locator(config), frozenset({f"{portal.scheme}://{portal.netloc}"}),
                     agent_reporter(config))

    async def run() -> None:
        async with proxy.serve(config.host, config.vnc_proxy_port) as server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
