"""`TracerClient`: how the other services and tools talk to the tracer. Services record their
traces through their outbox (`vre.outbox`), which sends them here after commit."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel

from tracer.chain import Anchor, ChainClient, ChainError
from tracer.merkle import ProofError, verify_inclusion
from tracer.schema import TraceIn, trace_leaf
from tracer.verify import IndexedEntry
from vre.client import ServiceClient, ServiceError


class LogEntry(NamedTuple):
    """One raw entry of the log: position, stored leaf hash, and the bytes that were hashed."""

    seq: int
    leaf_hash: bytes
    body: bytes


class TracerError(ServiceError):
    """The tracer refused or failed a request; carries its status and stable error code."""

    service = "tracer"


class TracerUnavailable(TracerError):
    """The tracer could not be reached: nothing was recorded."""


class TracerClient(ServiceClient):
    """Record, query and prove traces over the tracer's HTTP API."""

    error = TracerError
    unavailable = TracerUnavailable

    def record(self, trace: dict[str, Any] | BaseModel) -> dict[str, Any]:
        """Store one trace; returns it with its sequence number once durable."""
        return self._call("POST", "/api/v1/traces", json=_plain(trace))

    def record_many(self, traces: list[dict[str, Any] | BaseModel],
                    timeout: float | None = None) -> list[dict[str, Any]]:
        """Store traces atomically, in order; a trace whose id the log holds already is
        answered with its original entry (so a retry is stored once)."""
        return self._call("POST", "/api/v1/traces", json=[_plain(t) for t in traces],
                          timeout=timeout)["traces"]

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

    def indexed_entries(self, start: int, limit: int = 10_000
                        ) -> tuple[int, list[IndexedEntry]]:
        """(log size, entries from `start` with the lookup columns and dataset links stored
        beside each), to verify what the log's queries answer from as well."""
        response = self._call("GET", "/api/v1/log/entries", raw=True,
                              params={"start": start, "limit": limit, "index": "true"})
        entries = []
        for line in response.content.splitlines():
            seq, leaf, index, body = line.split(b" ", 3)
            stored = json.loads(base64.urlsafe_b64decode(index))
            entries.append(IndexedEntry(int(seq), body, bytes.fromhex(leaf.decode()),
                                        stored["columns"], stored["datasets"]))
        return int(response.headers["X-Log-Size"]), entries

    def log_index(self) -> dict[str, Any]:
        """The table of public histories and the first dataset index row naming no trace."""
        return self._call("GET", "/api/v1/log/index")


def checked_trace(trace: dict[str, Any]) -> dict[str, Any]:
    """The trace as the tracer will take it, or ValueError naming what it would refuse:
    checked before it is written to an outbox, so a trace that would be refused fails its
    action instead of waiting for ever."""
    return _plain(TraceIn.model_validate(trace))


def _plain(trace: dict[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(trace, BaseModel):
        return trace.model_dump(mode="json", exclude_none=True)
    return trace


# What the tracer answers beside a trace's record: not part of what was hashed.
_NOT_HASHED = frozenset({"leaf_hash", "redacted"})


@dataclass(frozen=True)
class TraceCheck:
    """Whether a trace is proven to be in the log whose root is anchored on the chain."""

    verified: bool
    reason: str = ""
    anchor_index: int | None = None
    tree_size: int | None = None


class TraceVerifier:
    """Checks traces against the newest root anchored on the chain: each trace's record is
    re-hashed (so the mark covers what is shown) and its inclusion proof must reproduce that
    root. The chain, not the tracer's database, is the trust anchor."""

    def __init__(self, tracer: TracerClient, chain: ChainClient) -> None:
        self.tracer = tracer
        self.chain = chain

    def check(self, traces: list[dict[str, Any]]) -> dict[str, TraceCheck]:
        """A verdict per trace id; a ledger or chain that cannot be read verifies nothing."""
        try:
            anchor = self.chain.latest_anchor()
        except ChainError as exc:
            return {t["id"]: TraceCheck(False, f"chain unavailable: {exc}") for t in traces}
        if anchor is None:
            return {t["id"]: TraceCheck(False, "nothing is anchored on the chain yet")
                    for t in traces}
        return {t["id"]: self._check_one(t, anchor) for t in traces}

    def _check_one(self, trace: dict[str, Any], anchor: Anchor) -> TraceCheck:
        if trace["seq"] >= anchor.tree_size:
            return TraceCheck(False, "not anchored yet", anchor.index, anchor.tree_size)
        if trace.get("redacted"):
            return TraceCheck(False, "a public extract cannot be re-hashed; verify the whole "
                              "trace", anchor.index, anchor.tree_size)
        # The hashed record is the trace as served, less what is not hashed (and an empty
        # link to its predecessor: traces written before links existed have none).
        record = {k: v for k, v in trace.items()
                  if k not in _NOT_HASHED and not (k == "prev" and v is None)}
        _, leaf = trace_leaf(record)
        try:
            proof = self.tracer.proof(trace["id"], tree_size=anchor.tree_size)
            if proof["leaf_hash"] != leaf.hex() or proof["leaf_index"] != trace["seq"]:
                raise ProofError("the trace's record does not hash to the proven leaf")
            verify_inclusion(leaf, trace["seq"], anchor.tree_size,
                             [bytes.fromhex(p) for p in proof["proof"]], anchor.root)
        except (TracerError, ProofError, ValueError, KeyError) as exc:
            return TraceCheck(False, str(exc), anchor.index, anchor.tree_size)
        return TraceCheck(True, "", anchor.index, anchor.tree_size)
