"""`TracerClient`: how the other services and tools talk to the tracer. A caller whose trace
could not be stored gets an exception and must not commit its own change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import requests
from pydantic import BaseModel

from vre.service_auth import TokenSource


class LogEntry(NamedTuple):
    """One raw entry of the log: position, stored leaf hash, and the bytes that were hashed."""

    seq: int
    leaf_hash: bytes
    body: bytes


class TracerError(Exception):
    """The tracer refused or failed a request; carries its status and stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"tracer: {status} {code}: {message}")
        self.status = status
        self.code = code


class TracerUnavailable(TracerError):
    """The tracer could not be reached: nothing was recorded."""


class TracerClient:
    """Record, query and prove traces over the tracer's HTTP API."""

    def __init__(self, base_url: str, tokens: TokenSource | None = None,
                 timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        self.http = session or requests.Session()

    def _call(self, method: str, path: str, *, raw: bool = False, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if self.tokens is not None:
            headers["Authorization"] = f"Bearer {self.tokens.token()}"
        try:
            response = self.http.request(method, self.base_url + path, headers=headers,
                                         timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise TracerUnavailable(0, "tracer_unavailable", str(exc)) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            cls = TracerUnavailable if response.status_code >= 500 else TracerError
            raise cls(response.status_code, code, message)
        return response if raw else response.json()

    def record(self, trace: dict[str, Any] | BaseModel) -> dict[str, Any]:
        """Store one trace; returns it with its sequence number once durable."""
        return self._call("POST", "/api/v1/traces", json=_plain(trace))

    def record_many(self, traces: list[dict[str, Any] | BaseModel]) -> list[dict[str, Any]]:
        """Store traces atomically, in order."""
        return self._call("POST", "/api/v1/traces", json=[_plain(t) for t in traces])["traces"]

    def get(self, trace_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/traces/{trace_id}")

    def query(self, page_size: int = 500, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every trace matching the filters (dataset, actor, action, since, until), in order."""
        after = -1
        while True:
            params = {k: v for k, v in filters.items() if v is not None}
            page = self._call("GET", "/api/v1/traces",
                              params={**params, "after": after, "limit": page_size})
            yield from page["traces"]
            if page["next_after"] is None:
                return
            after = page["next_after"]

    def proof(self, trace_id: str, tree_size: int | None = None) -> dict[str, Any]:
        params = {"tree_size": tree_size} if tree_size else {}
        return self._call("GET", f"/api/v1/traces/{trace_id}/proof", params=params)

    def checkpoints(self, before: int | None = None, limit: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        return self._call("GET", "/api/v1/checkpoints", params=params)

    def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        return self._call("GET", "/api/v1/consistency", params={"from": size1, "to": size2})

    def entries(self, start: int, limit: int = 10_000) -> tuple[int, list[LogEntry]]:
        """(log size, raw entries from `start`) for full verification (auditors, services)."""
        response = self._call("GET", "/api/v1/log/entries", raw=True,
                              params={"start": start, "limit": limit})
        entries = []
        for line in response.content.splitlines():
            seq, leaf, body = line.split(b" ", 2)
            entries.append(LogEntry(int(seq), bytes.fromhex(leaf.decode()), body))
        return int(response.headers["X-Log-Size"]), entries


def _plain(trace: dict[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(trace, BaseModel):
        return trace.model_dump(mode="json", exclude_none=True)
    return trace
