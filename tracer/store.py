"""Durable, append-only storage of traces: a trace is acknowledged only once committed with
its sequence number; reads go through indexes and paginate."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from tracer.models import LogHead, PublishedDataset, TraceDataset, TraceRow
from tracer.schema import (
    Action,
    DatasetUpdate,
    TraceIn,
    dataset_links,
    format_time,
    lookup_columns,
    trace_leaf,
    trace_record,
)
from tracer.verify import IndexedEntry
from vre.db import bulk_insert, utcnow
from vre.errors import Conflict


@dataclass(frozen=True)
class StoredTrace:
    """A trace as it sits in the log."""

    seq: int
    record: dict[str, Any]
    leaf_hash: bytes

    @classmethod
    def of(cls, row: TraceRow) -> StoredTrace:
        return cls(row.seq, json.loads(row.body), bytes(row.leaf_hash))


def append(session: Session, traces: Sequence[TraceIn]) -> list[StoredTrace]:
    """Append traces in order, in the caller's transaction. A trace's id is its idempotency
    key: one the log holds already is answered with its original entry and seq, not stored
    again, also when two deliveries of it arrive at once."""
    now = utcnow()
    ids = [str(t.id or uuid.uuid4()) for t in traces]
    if len(set(ids)) < len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise Conflict(f"trace id {twice} appears twice in one request",
                       code="duplicate_trace_id", field="id")
    keyed = [str(t.id) for t in traces if t.id is not None]
    # The UPDATE takes the log's write lock first (row lock on PostgreSQL, database lock on
    # SQLite), so sequence numbers are contiguous and in commit order, and the keys are
    # looked up only once every earlier append has committed: a retry racing its original
    # finds it.
    grow = sa.update(LogHead).where(LogHead.id == 1)
    if not keyed:
        size = session.execute(grow.values(size=LogHead.size + len(traces))
                               .returning(LogHead.size)).scalar_one()
        return _insert(session, list(zip(ids, traces, strict=True)), size - len(traces), now)
    first = session.execute(grow.values(size=LogHead.size).returning(LogHead.size)).scalar_one()
    known = _known_ids(session, keyed)
    existing = {row.id: row for row in session.scalars(
        sa.select(TraceRow).where(TraceRow.id.in_(known)))} if known else {}
    out: list[StoredTrace | None] = []
    fresh: list[tuple[int, str, TraceIn]] = []
    for trace_id, trace in zip(ids, traces, strict=True):
        if trace_id in existing:
            stored = StoredTrace.of(existing[trace_id])
            again = trace_record(trace, uuid.UUID(trace_id), now, stored.seq)
            if _comparable(stored.record) != _comparable(again):
                raise Conflict(f"trace id {trace_id} exists with other content",
                               code="trace_id_conflict", field="id")
            out.append(stored)
        else:
            fresh.append((len(out), trace_id, trace))
            out.append(None)  # filled in below
    if fresh:
        session.execute(grow.values(size=first + len(fresh)))
        for (position, _, _), stored in zip(
                fresh, _insert(session, [(i, t) for _, i, t in fresh], first, now),
                strict=True):
            out[position] = stored
    return [s for s in out if s is not None]


def _known_ids(session: Session, ids: list[str]) -> list[str]:
    """Which of these trace ids the log holds: the check every keyed append makes, so one
    array parameter on PostgreSQL rather than a thousand."""
    if session.get_bind().dialect.name == "postgresql":
        wanted = sa.bindparam("ids", ids, type_=postgresql.ARRAY(sa.String))
        return list(session.scalars(sa.select(TraceRow.id).where(TraceRow.id == sa.any_(wanted))))
    return list(session.scalars(sa.select(TraceRow.id).where(TraceRow.id.in_(ids))))


def _insert(session: Session, traces: list[tuple[str, TraceIn]], first: int,
            now: datetime) -> list[StoredTrace]:
    """Write new traces at seq `first` on (the caller holds the log's write lock)."""
    # Each trace names its predecessor's leaf; the previous batch's last row is read under
    # the log's write lock, so no other batch can slip in between.
    prev = session.scalar(sa.select(TraceRow.leaf_hash).where(TraceRow.seq == first - 1)) \
        if first else None
    rows, links, out = [], [], []
    for offset, (trace_id, trace) in enumerate(traces):
        seq = first + offset
        record = trace_record(trace, uuid.UUID(trace_id), now, seq,
                              bytes(prev) if prev is not None else None)
        body, leaf = trace_leaf(record)
        # The lookup columns come from the hashed record, so verification can recompute them.
        rows.append({"seq": seq, "recorded_at": now, **lookup_columns(record),
                     "body": body, "leaf_hash": leaf})
        links.extend({"dataset_id": dataset_id, "seq": seq}
                     for dataset_id in dataset_links(record))
        out.append(StoredTrace(seq, record, leaf))
        prev = leaf
    bulk_insert(session, TraceRow.__table__, rows)
    bulk_insert(session, TraceDataset.__table__, links)
    _record_publications(session, [(first + offset, t) for offset, (_, t) in
                                   enumerate(traces)])
    return out


def _record_publications(session: Session, appended: list[tuple[int, TraceIn]]) -> None:
    """Remember datasets whose PUBLISH trace just entered the log (their history is public)."""
    published: dict[str, int] = {}
    for seq, trace in appended:
        if trace.details.update == DatasetUpdate.PUBLISH:
            for d in trace.datasets:
                published.setdefault(d.id, seq)  # the first publication is the one kept
    if not published:
        return
    known = set(session.scalars(sa.select(PublishedDataset.dataset_id).where(
        PublishedDataset.dataset_id.in_(published))))
    for dataset_id, seq in published.items():
        if dataset_id not in known:
            session.add(PublishedDataset(dataset_id=dataset_id, seq=seq))


def public_datasets(session: Session, dataset_ids: Sequence[str]) -> set[str]:
    """Which of these datasets have a public history."""
    if not dataset_ids:
        return set()
    return set(session.scalars(sa.select(PublishedDataset.dataset_id).where(
        PublishedDataset.dataset_id.in_(list(dataset_ids)))))


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("time", "prev")}


def entries(session: Session, start: int, limit: int) -> list[tuple[int, bytes, bytes]]:
    """(seq, leaf hash, body) from `start` in log order, as fast as the database allows."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        # Binary results carry bytea as is (the text protocol doubles it into hex): this is
        # the path full verification reads millions of rows through.
        with conn.connection.driver_connection.cursor() as cursor:
            cursor.execute("SELECT seq, leaf_hash, body FROM traces WHERE seq >= %s "
                           "ORDER BY seq LIMIT %s", (start, limit), binary=True)
            return cursor.fetchall()
    return [(seq, bytes(leaf), bytes(body)) for seq, leaf, body in session.execute(
        sa.select(TraceRow.seq, TraceRow.leaf_hash, TraceRow.body)
        .where(TraceRow.seq >= start).order_by(TraceRow.seq).limit(limit))]


def indexed_entries(session: Session, start: int, limit: int) -> list[IndexedEntry]:
    """Stored traces from `start` in log order, with what the log's queries read beside each:
    its lookup columns and its dataset index rows (for verification of both)."""
    rows = session.execute(
        sa.select(TraceRow.seq, TraceRow.body, TraceRow.leaf_hash, TraceRow.id, TraceRow.actor,
                  TraceRow.action, TraceRow.update, TraceRow.recorded_at)
        .where(TraceRow.seq >= start).order_by(TraceRow.seq).limit(limit)).all()
    if not rows:
        return []
    links: dict[int, list[str]] = {}
    for seq, dataset_id in session.execute(
            sa.select(TraceDataset.seq, TraceDataset.dataset_id).where(
                TraceDataset.seq >= rows[0].seq, TraceDataset.seq <= rows[-1].seq)):
        links.setdefault(seq, []).append(dataset_id)
    return [IndexedEntry(row.seq, bytes(row.body), bytes(row.leaf_hash), {
        "id": row.id, "actor": row.actor, "action": row.action, "update": row.update,
        # SQLite hands back naive datetimes; every stored time is UTC
        "recorded_at": format_time(row.recorded_at if row.recorded_at.tzinfo
                                   else row.recorded_at.replace(tzinfo=UTC))},
        links.get(row.seq, [])) for row in rows]


def stray_link(session: Session) -> int | None:
    """The first trace the dataset index lists that the log does not hold (None: none)."""
    return session.scalar(sa.select(sa.func.min(TraceDataset.seq)).where(
        ~sa.exists().where(TraceRow.seq == TraceDataset.seq)))


def published_positions(session: Session) -> dict[str, int]:
    """The table of public histories: dataset id to the position of its publication."""
    return dict(session.execute(sa.select(PublishedDataset.dataset_id,
                                          PublishedDataset.seq)).all())


def log_size(session: Session) -> int:
    return session.scalar(sa.select(LogHead.size).where(LogHead.id == 1)) or 0


def get(session: Session, trace_id: str) -> StoredTrace | None:
    row = session.scalar(sa.select(TraceRow).where(TraceRow.id == trace_id))
    return StoredTrace.of(row) if row else None


@dataclass(frozen=True)
class TraceQuery:
    """Filters of a trace listing; every combination is served by an index."""

    dataset: str | None = None
    actor: str | None = None
    action: Action | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_seq: int = -1
    limit: int = 100


def query(session: Session, q: TraceQuery) -> list[StoredTrace]:
    """Traces matching the filters, in log order, after a cursor (keyset pagination)."""
    stmt = sa.select(TraceRow).where(TraceRow.seq > q.after_seq)
    if q.dataset is not None:
        stmt = stmt.join(TraceDataset, TraceDataset.seq == TraceRow.seq).where(
            TraceDataset.dataset_id == q.dataset)
    if q.actor is not None:
        stmt = stmt.where(TraceRow.actor == q.actor)
    if q.action is not None:
        stmt = stmt.where(TraceRow.action == q.action.value)
    if q.since is not None:
        stmt = stmt.where(TraceRow.recorded_at >= q.since)
    if q.until is not None:
        stmt = stmt.where(TraceRow.recorded_at < q.until)
    stmt = stmt.order_by(TraceRow.seq).limit(q.limit)
    return [StoredTrace.of(row) for row in session.scalars(stmt)]
