"""The one HTTP client base for the platform's services: bearer tokens, timeouts, and the
JSON error model turned back into exceptions that carry status, stable code and details;
and Unix sockets reached however deep the data directory is."""

from __future__ import annotations

import contextlib
import json as _json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import urllib3

from vre.logs import REQUEST_ID_HEADER, current_request_id
from vre.service_auth import TokenSource


class ServiceError(Exception):
    """A service refused or failed a request; carries its status, stable code and details."""

    service = "service"

    def __init__(self, status: int, code: str, message: str,
                 field: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{self.service}: {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details or {}


class ServiceUnavailable(ServiceError):
    """The service could not be reached or failed on its side (5xx): nothing was done."""


@dataclass(frozen=True)
class Answer:
    """A service's raw answer, for the few calls that read more than its JSON body."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)


def connection_pool(max_per_host: int = 10) -> urllib3.PoolManager:
    """Keep-alive connections to the platform's services, for one process to share. Plain
    urllib3: no proxy or netrc lookups from the environment and no retries; a call that
    fails is the caller's to handle, never silently repeated."""
    return urllib3.PoolManager(num_pools=8, maxsize=max_per_host, retries=False)


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for the Unix socket at `path` that fits the kernel's 108-byte limit on
    socket paths however deep its folder is: its name under the open folder's descriptor,
    good to bind or connect to within the block."""
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def connect_unix(path: Path | str, timeout: float | None = None) -> socket.socket:
    """A stream socket connected to the Unix socket at `path` (see socket_address)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with socket_address(Path(path)) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class _UnixConnection(urllib3.connection.HTTPConnection):
    """HTTP over a Unix socket: what a workload, which has no network, speaks to the platform."""

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        try:
            return connect_unix(self.socket_path, timeout)
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(
                self, exc.strerror or str(exc)) from None


class _UnixSocketPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection  # type: ignore[assignment]

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        # Clients name whole URLs; on a socket only the path and query go on the wire.
        return super().urlopen(method, urllib3.util.parse_url(url).request_uri, *args, **kwargs)


def unix_socket_pool(path: str, maxsize: int = 4) -> urllib3.HTTPConnectionPool:
    """Connections to the platform's API through a Unix socket (a workload's API socket); give
    the client the base URL `http://localhost`."""
    return _UnixSocketPool("localhost", maxsize=maxsize, retries=False, socket_path=path)


class ServiceClient:
    """Calls one service's `/api/v1`; subclasses name their own error classes."""

    error: ClassVar[type[ServiceError]] = ServiceError
    unavailable: ClassVar[type[ServiceError]] = ServiceUnavailable

    def __init__(self, base_url: str, tokens: TokenSource | None = None,
                 timeout: float = 10.0,
                 pool: urllib3.PoolManager | urllib3.HTTPConnectionPool | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self.pool = pool or connection_pool()

    def _call(self, method: str, path: str, *, raw: bool = False,
              params: Mapping[str, Any] | None = None, json: Any = None,
              unless: str | None = None, timeout: float | None = None) -> Any:
        """`unless`: an ETag the caller holds; the service answers 304 and no body while it
        still names the answer (asked with raw=True, to read the status). `timeout`: this
        call's own bound, in seconds, instead of the client's."""
        response = self._send(method, path, params=params, json=json, unless=unless,
                              timeout=timeout, stream=False)
        answer = Answer(response.status, response.headers, response.data)
        return answer if raw else answer.json()

    def _stream(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """The answer's body in chunks as it arrives, for bodies too large to hold in memory.
        Nothing is sent until the first chunk is asked for; a refusal raises then, as from
        `_call`, and so does a connection lost half way."""
        response = self._send(method, path, params=params, stream=True)
        complete = False
        try:
            yield from response.stream(chunk_size)
            complete = True
        except urllib3.exceptions.HTTPError as exc:
            raise self.unavailable(0, f"{self.error.service}_unavailable",
                                   f"the {self.error.service} service {_failure(exc)}") from None
        finally:
            if complete:
                response.release_conn()
            else:  # a half-read answer cannot carry the next request
                response.close()

    def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json: Any = None, unless: str | None = None, timeout: float | None = None,
              stream: bool) -> urllib3.BaseHTTPResponse:
        """One request; a refusal or failure raised as the service's error, with its code."""
        headers = {"Accept": "application/json"}
        if unless:
            headers["If-None-Match"] = unless
        request_id = current_request_id()
        if request_id is not None:  # called while serving a request: its id goes along
            headers[REQUEST_ID_HEADER] = request_id
        if self.tokens is not None:
            headers["Authorization"] = f"Bearer {self.tokens.token()}"
        url = self.base_url + path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urlencode(query, doseq=True)
        body = None
        if json is not None:
            body = _json.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self.pool.request(method, url, body=body, headers=headers,
                                         timeout=self.timeout if timeout is None else
                                         urllib3.Timeout(connect=timeout, read=timeout),
                                         redirect=False, preload_content=not stream)
        except urllib3.exceptions.HTTPError as exc:
            # urllib3's words name the host, port and path; callers pass this message on
            # to people, so it says only what went wrong.
            raise self.unavailable(0, f"{self.error.service}_unavailable",
                                   f"the {self.error.service} service {_failure(exc)}") from None
        if response.status >= 400:
            answer = Answer(response.status, response.headers, response.data)
            response.release_conn()
            try:
                error = answer.json()["error"]
                code, message = error["code"], error["message"]
                field, details = error.get("field"), error.get("details")
            except (ValueError, KeyError, TypeError):
                code, message, field, details = "http_error", answer.text[:200], None, None
            cls = self.unavailable if answer.status >= 500 else self.error
            raise cls(answer.status, code, message, field, details)
        return response


def _failure(exc: urllib3.exceptions.HTTPError) -> str:
    """What went wrong with a call, without the address it went to."""
    cause = getattr(exc, "reason", None) or exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):  # before: it is a timeout
        return "could not be reached"
    if isinstance(cause, urllib3.exceptions.TimeoutError):
        return "did not answer in time"
    return f"failed to answer ({type(cause).__name__})"
