"""The workloads' one way to the platform's API on one machine: for each running workload an
HTTP socket in its run folder (seen inside the sandbox as /run/vre/api.sock), which accepts
only that workload's own token and passes the request on to the portal; and the renewal of
that token, rewritten into the run folder while the workload runs.

A process of its own (`vre up` starts it), so that a fault in relaying requests never reaches
the compute agent. The run folder is writable from inside the sandbox: nothing in it is
trusted, read or followed. A renewed token is made from the database's record of the
workload, never from the token file, and written under a fresh name, then renamed over."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import urllib3

from portal.compute.local import api_socket_path, ensure_workload_user
from portal.compute.tokens import workload_token
from portal.models import Workload
from vre.config import Config
from vre.db import Database
from vre.tokens import WORKLOAD_SCOPE, TokenError, TokenIssuer, TokenValidator, bearer_token
from vre.web import validator_for

log = logging.getLogger("vre.compute.gateway")
SYNC_SECONDS = 1.0
API_PREFIX = "/api/v1/"
# What a workload's request may carry on to the portal; nothing else of it passes.
REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "If-None-Match")
RESPONSE_HEADERS = ("Content-Type", "ETag", "Cache-Control", "X-Next-Offset", "X-Job-State",
                    "X-Content-Type-Options", "Location")
CHUNK = 1 << 16


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    workload_id: str
    gateway: WorkloadGateway


class _Relay(BaseHTTPRequestHandler):
    """One request of a workload, checked and passed on; the answer streamed back."""

    server: _Server
    protocol_version = "HTTP/1.0"  # one request a connection: the answer ends with it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("workload %s: " + format, self.server.workload_id, *args)

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = _error(code, message)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _relay(self) -> None:
        gateway = self.server.gateway
        if not self.path.startswith(API_PREFIX) or "\\" in self.path:
            self._refuse(404, "not_found", "only the platform's API is reached here")
            return
        refusal = gateway.check(self.server.workload_id, self.headers.get("Authorization"))
        if refusal is not None:
            self._refuse(403 if refusal[0] != "token_missing" else 401, *refusal)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= gateway.max_body_bytes:
            self._refuse(413, "body_too_large", "the request body is too large")
            return
        body = self.rfile.read(length) if length else None
        headers = {k: v for k in REQUEST_HEADERS if (v := self.headers.get(k)) is not None}
        try:
            answer = gateway.pool.request(
                self.command, gateway.portal_url + self.path, body=body, headers=headers,
                preload_content=False, redirect=False, retries=False)
        except urllib3.exceptions.HTTPError:
            self._refuse(503, "portal_unavailable", "the portal does not answer; try again")
            return
        try:
            self.send_response(answer.status)
            for name in RESPONSE_HEADERS:
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.end_headers()
            for chunk in answer.stream(CHUNK):  # a log followed is passed on as it comes
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            answer.release_conn()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay


@dataclass
class _Open:
    server: _Server
    thread: threading.Thread
    token_expires: float = 0.0


class WorkloadGateway:
    """The API sockets of the running workloads and their tokens' renewal."""

    def __init__(self, config: Config, db: Database, validator: TokenValidator,
                 issuer: TokenIssuer, pool: urllib3.PoolManager | None = None) -> None:
        self.config = config
        self.db = db
        self.validator = validator
        self.issuer = issuer
        self.portal_url = config.url_of("portal")
        self.max_body_bytes = config.max_body_bytes
        self.pool = pool or urllib3.PoolManager(maxsize=16, retries=False)
        self.user = ensure_workload_user(config.workload_user)
        self.open: dict[str, _Open] = {}

    # -- what a request must carry --------------------------------------------------------
    def check(self, workload_id: str, authorization: str | None) -> tuple[str, str] | None:
        """None when the request carries this workload's own token, else (code, why not)."""
        token = bearer_token(authorization)
        if not token:
            return "token_missing", "a bearer token is required: the workload's own"
        try:
            principal = self.validator.validate(token)
        except TokenError as exc:
            return exc.code, exc.message
        if principal.workload_id != workload_id or WORKLOAD_SCOPE not in principal.scopes:
            return "token_not_this_workload", "only this workload's own token is accepted here"
        return None

    # -- keeping up with the workloads ----------------------------------------------------
    def sync(self) -> None:
        """Open a socket for each running workload, renew the tokens running out, and close
        what belongs to workloads that ended."""
        with self.db.session() as session:
            running = {row.id: (row.owner_id, list(row.datasets)) for row in session.scalars(
                sa.select(Workload).where(Workload.state == "running"))}
        for workload_id in set(self.open) - set(running):
            self._close(workload_id)
        now = time.time()
        for workload_id, (owner, datasets) in running.items():
            try:
                opened = self.open.get(workload_id) or self._open(workload_id)
                if opened.token_expires - now < self.config.token_ttl_seconds / 2:
                    opened.token_expires = self._renew(workload_id, owner, datasets)
            except OSError as exc:  # its folder is gone, or a name in it is taken: next round
                log.warning("workload %s: API socket or token not ready: %s", workload_id, exc)

    def _open(self, workload_id: str) -> _Open:
        path = api_socket_path(self.config, workload_id)
        folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=folder)  # whatever was left there, never followed
            # Bound through the folder's descriptor: a deep data directory never meets the
            # 108-byte limit on socket paths. Made 0666 (the folder is the workload's alone)
            # by the umask, as a chmod after binding could follow a link planted meanwhile.
            previous = os.umask(0o111)
            try:
                server = _Server(f"/proc/self/fd/{folder}/{path.name}", _Relay)
            finally:
                os.umask(previous)
        finally:
            os.close(folder)
        server.workload_id, server.gateway = workload_id, self
        thread = threading.Thread(target=server.serve_forever, daemon=True,
                                  name=f"api-{workload_id}")
        thread.start()
        opened = _Open(server, thread)
        self.open[workload_id] = opened
        return opened

    def _renew(self, workload_id: str, owner: str, datasets: list[str]) -> float:
        """Write a fresh token for the workload into its run folder; when it expires."""
        token = workload_token(self.issuer, owner, workload_id, datasets,
                               self.config.token_ttl_seconds)
        folder_path = api_socket_path(self.config, workload_id).parent
        folder = os.open(folder_path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        temporary = f".token-{secrets.token_hex(8)}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600, dir_fd=folder)
            try:
                os.write(fd, token.encode())
                if os.geteuid() == 0:
                    os.fchown(fd, self.user.uid, self.user.gid)
            finally:
                os.close(fd)
            os.replace(temporary, "token", src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
        finally:
            os.close(folder)
        return time.time() + self.config.token_ttl_seconds

    def _close(self, workload_id: str) -> None:
        opened = self.open.pop(workload_id)
        opened.server.shutdown()
        opened.server.server_close()
        with contextlib.suppress(OSError):  # the folder may be gone with the workload
            os.unlink(api_socket_path(self.config, workload_id))

    def close(self) -> None:
        for workload_id in list(self.open):
            self._close(workload_id)

    def run_forever(self, stop: threading.Event,
                    alive: Callable[[], None] | None = None) -> None:
        """Keep up until asked to stop; a failed round is logged, never fatal."""
        while not stop.is_set():
            try:
                self.sync()
                if alive is not None:
                    alive()
            except Exception:
                log.exception("keeping the workloads' API sockets failed")
            stop.wait(SYNC_SECONDS)
        self.close()


def heartbeat_path(config: Config) -> Path:
    """Rewritten after every round, so `vre status` can tell a live gateway from a stuck one."""
    return config.home / "run" / "workload-gateway.alive"


def main(argv: list[str] | None = None) -> None:
    """`python -m portal.compute.gateway`: the process `vre up` starts."""
    from vre.config import load_config
    from vre.services import service

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    config = load_config()
    db = Database.for_service(config, "portal", service("portal").migrations)
    issuer = TokenIssuer.from_file(config.signing_key_path, config.portal_issuer,
                                   config.token_audience, config.token_ttl_seconds)
    gateway = WorkloadGateway(config, db, validator_for(config), issuer)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    beat = heartbeat_path(config)
    gateway.run_forever(stop, lambda: beat.write_text(str(time.time())))


if __name__ == "__main__":
    main()
