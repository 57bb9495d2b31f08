"""The transactional outbox of traces: a service writes the trace of an action in the same
database transaction as the action, and delivers it after commit, keyed by the trace's id,
until the tracer acknowledges it. So the log holds exactly the actions that committed, and a
tracer outage delays traces without losing them or holding actions up past a bounded wait.

The trace's id is its idempotency key: the tracer stores it (unique) and answers a repeated
one with the original entry, so a trace sent twice (a lost answer, two processes draining
the same outbox) is in the log once."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.orm import Session

from vre.client import ServiceError, ServiceUnavailable
from vre.db import Database, UtcDateTime, after_commit, on_rollback, utcnow
from vre.web import config_of, db_of

log = logging.getLogger("vre.outbox")

TABLE = "trace_outbox"

#: Sends traces (each with its "id") and answers the tracer's acknowledgements, one per
#: trace with its "id" and "seq"; the float is how long it may wait for the answer.
Send = Callable[[list[dict[str, Any]], float], Sequence[dict[str, Any]]]

MAX_RETRY_SECONDS = 60.0
LEASE_MARGIN_SECONDS = 5.0
_PENDING = "vre.outbox.pending"
_LATER = "vre.outbox.later"


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    """The outbox in a service's own tables (its migration creates the same)."""
    return sa.Table(
        TABLE,
        metadata,
        # the order of recording: traces are delivered oldest first
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trace_id", sa.String(36), nullable=False, unique=True),
        sa.Column("trace", sa.Text, nullable=False),  # JSON, as the tracer takes it
        sa.Column("created_at", UtcDateTime, nullable=False),
        # the next attempt; moved on by a lease while one is under way
        sa.Column("due_at", UtcDateTime, nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claim", sa.String(36)),  # the attempt under way
        sa.Column("last_error", sa.String(500)),
    )


class Outbox:
    """One service's outbox: `record` in the action's transaction; after commit the trace
    is sent at once (waiting at most `wait` seconds), and a deliverer thread per process
    sends whatever is left, oldest first, with back-off, including what an earlier process
    left behind when it stopped. The thread runs only while traces wait."""

    def __init__(
        self,
        db: Database,
        table: sa.Table,
        send: Send,
        *,
        wait: float,
        retry: float,
        batch: int = 200,
        poll: float = 5.0,
        linger: float = 0.2,
    ) -> None:
        self.db = db
        self.table = table
        self.send = send
        self.wait = wait
        self.retry = retry
        self.batch = batch
        self.poll = poll
        self.linger = linger
        self._lingers = False  # a trace that need not wait came: gather more before sending
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the thread's start and end
        self._sending = threading.Lock()  # one delivery at a time in this process
        self._thread: threading.Thread | None = None

    # -- in the action's transaction ------------------------------------------------------

    def record(self, session: Session, trace: dict[str, Any], *, at_once: bool = True) -> str:
        """Write a trace in the session's transaction; returns its id. It is delivered once
        that transaction commits, and never if it rolls back. With `at_once` False the
        request does not wait for it: the deliverer sends it with others, in one batch (for
        actions that come many a second, such as job submissions)."""
        return self.record_all(session, [trace], at_once=at_once)[0]

    def record_all(self, session: Session, traces: Sequence[dict[str, Any]], *,
                   at_once: bool = True) -> list[str]:
        """`record` for several traces, written in one statement; their ids in order."""
        trace_ids = keep_traces(session, self.table, traces)
        if not at_once:
            if not session.info.get(_LATER):
                session.info[_LATER] = True
                after_commit(session, lambda: (session.info.pop(_LATER, None),
                                               self._kick(linger=True)))
                on_rollback(session, lambda: session.info.pop(_LATER, None))
            return trace_ids
        pending: list[str] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []
            after_commit(session, lambda: self._committed(_forget(session, pending)))
            on_rollback(session, lambda: _forget(session, pending))
        pending.extend(trace_ids)
        return trace_ids

    def _committed(self, trace_ids: list[str]) -> None:
        """Deliver the traces a transaction just committed, within the bounded wait; what
        is not acknowledged by then is left to the deliverer."""
        try:
            if self._deliver_own(set(trace_ids)):
                return
        except Exception:
            log.exception("delivering traces after commit failed; the deliverer retries")
        self._kick()

    def _deliver_own(self, trace_ids: set[str]) -> bool:
        """Send the outbox in order until these traces are acknowledged; False when they
        are not within the bounded wait (older ones wait first: the log keeps the order)."""
        deadline = time.monotonic() + self.wait
        if not self._sending.acquire(timeout=self.wait):
            return False
        try:
            while (left := deadline - time.monotonic()) > 0:
                delivered = self._deliver_batch(left)
                trace_ids -= delivered
                if not trace_ids:
                    return True
                if not delivered:
                    return False
            return False
        finally:
            self._sending.release()

    # -- delivery ------------------------------------------------------------------------

    def drain(self) -> int:
        """Deliver every due trace, in order, batch after batch, until none is due or the
        tracer stops acknowledging; answers how many were delivered."""
        total = 0
        while not self._stop.is_set():
            with self._sending:
                sent = len(self._deliver_batch(max(self.wait, 30.0)))
            total += sent
            if sent < self.batch:
                return total
        return total

    def pending(self) -> int:
        """How many traces wait for the tracer's acknowledgement."""
        with self.db.reading() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(self.table)) or 0

    def _deliver_batch(self, timeout: float) -> set[str]:
        """Send the oldest due traces once; answers the ids the tracer acknowledged. Those
        it did not are due again, all together, after a back-off."""
        claim, rows = self._claim(lease=timeout + LEASE_MARGIN_SECONDS)
        if not rows:
            return set()
        traces = [json.loads(row.trace) for row in rows]
        try:
            self._send_checked(traces, timeout)
        except ServiceError as exc:
            if exc.status < 400 or exc.status >= 500 or isinstance(exc, ServiceUnavailable):
                self._release(claim, rows, exc)
                return set()
            return self._one_by_one(claim, rows, traces, timeout, exc)
        except Exception as exc:  # no answer, or one we could not read: not acknowledged
            self._release(claim, rows, exc)
            return set()
        self._delivered(claim, rows)
        return {row.trace_id for row in rows}

    def _send_checked(self, traces: list[dict[str, Any]], timeout: float) -> None:
        acks = self.send(traces, timeout)
        if sorted(str(a["id"]) for a in acks) != sorted(t["id"] for t in traces):
            raise ValueError("the tracer acknowledged other traces than were sent")

    def _one_by_one(
        self,
        claim: str,
        rows: Sequence[Any],
        traces: list[dict[str, Any]],
        timeout: float,
        refusal: ServiceError,
    ) -> set[str]:
        """The tracer refused a batch: send its traces one at a time, in order, up to the
        one it refuses. That one is kept and retried slowly, and holds back those after it
        (so the log keeps the order): a fault for a person to look at, logged as such."""
        delivered: set[str] = set()
        for i, (row, trace) in enumerate(zip(rows, traces, strict=True)):
            try:
                if len(rows) == 1:
                    raise refusal
                self._send_checked([trace], timeout)
            except Exception as exc:
                refused = isinstance(exc, ServiceError) and 400 <= exc.status < 500
                if refused:
                    log.error(
                        "the tracer refused trace %s: %s",
                        row.trace_id,
                        exc,
                        extra={"event": "trace_refused", "trace_id": row.trace_id},
                    )
                self._release(claim, rows[i:], exc, refused=refused)
                return delivered
            self._delivered(claim, [row])
            delivered.add(row.trace_id)
        return delivered

    def _claim(self, lease: float) -> tuple[str, Sequence[Any]]:
        """Take the oldest due traces for one attempt: their due time moves a lease ahead
        (beyond the attempt's own time-out), so no other thread or process sends them
        meanwhile, and if this one dies they are due again soon after. Taken in order up
        to the first that is backing off; traces another process is sending are passed
        over."""
        claim, now, t = str(uuid.uuid4()), utcnow(), self.table
        with self.db.session() as session:
            oldest = session.execute(
                sa.select(t.c.position, t.c.due_at, t.c.claim)
                .order_by(t.c.position)
                .limit(self.batch)
            ).all()
            positions = []
            for row in oldest:
                if row.due_at <= now:
                    positions.append(row.position)
                elif row.claim is None:
                    break  # backing off: what follows waits behind it
            if not positions:
                return claim, []
            # The condition is checked again on each row as it is updated: of two claims
            # racing for a row, one finds it no longer due.
            session.execute(
                sa.update(t)
                .where(t.c.position.in_(positions), t.c.due_at <= now)
                .values(
                    claim=claim,
                    due_at=now + timedelta(seconds=lease),
                    attempts=t.c.attempts + 1,
                )
            )
            rows = session.execute(
                sa.select(t.c.position, t.c.trace_id, t.c.trace, t.c.attempts)
                .where(t.c.claim == claim)
                .order_by(t.c.position)
            ).all()
        return claim, rows

    def _delivered(self, claim: str, rows: Sequence[Any]) -> None:
        with self.db.session() as session:
            session.execute(
                sa.delete(self.table).where(
                    self.table.c.claim == claim,
                    self.table.c.position.in_([row.position for row in rows]),
                )
            )

    def _release(
        self, claim: str, rows: Sequence[Any], error: Exception, refused: bool = False
    ) -> None:
        """Not acknowledged: due again after a back-off that doubles with each attempt of
        the oldest, the same for all (so they go again together, in order)."""
        pause = MAX_RETRY_SECONDS
        if not refused:
            pause = min(MAX_RETRY_SECONDS, self.retry * 2 ** max(0, rows[0].attempts - 1))
        pause *= random.uniform(0.8, 1.0)  # processes that failed together spread out
        with self.db.session() as session:
            session.execute(
                sa.update(self.table)
                .where(
                    self.table.c.claim == claim,
                    self.table.c.position.in_([row.position for row in rows]),
                )
                .values(
                    claim=None,
                    due_at=utcnow() + timedelta(seconds=pause),
                    last_error=str(error)[:500],
                )
            )
        log.warning(
            "%d trace(s) not acknowledged by the tracer, kept for later: %s",
            len(rows),
            error,
            extra={"event": "trace_delivery_failed"},
        )

    # -- the deliverer thread -------------------------------------------------------------

    def start(self) -> None:
        """Drain what an earlier process left behind: the deliverer runs while the outbox
        holds traces and ends when it is empty, until the next trace waits."""
        self._kick()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the deliverer (what it has not sent stays in the outbox)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _kick(self, linger: bool = False) -> None:
        """Wake the deliverer, starting it if it is not running; with `linger`, it first
        waits a moment for more traces, so that many a second go in few batches."""
        with self._lock:
            self._lingers = self._lingers or linger
            self._wake.set()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="trace-outbox", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        failures, waiting = 0, False
        while not self._stop.is_set():
            self._wake.clear()
            if self._lingers:
                self._lingers = False
                self._stop.wait(self.linger)
            pause: float | None
            try:
                self.drain()
                pause = self._until_next_due()
                failures, waiting = 0, pause is not None
            except sa.exc.SQLAlchemyError as exc:
                # The database is away (or, at a first start, not migrated yet). With
                # traces waiting, try again for a while; else the next trace that waits,
                # or the next start, wakes the deliverer.
                failures += 1
                level = logging.WARNING if waiting else logging.DEBUG
                log.log(level, "the trace outbox is not readable: %s", exc.__class__.__name__)
                pause = self.poll if waiting and failures < 12 else None
            except Exception:
                log.exception("the trace deliverer failed a round")
                pause = self.poll
            with self._lock:
                if pause is None and not self._wake.is_set():
                    self._thread = None
                    return
            self._wake.wait(pause or 0)
        with self._lock:
            self._thread = None

    def _until_next_due(self) -> float | None:
        """Seconds until the next trace is due, at most `poll` (another process may hold
        some for a while); None when the outbox is empty."""
        with self.db.reading() as session:
            due = session.scalar(sa.select(sa.func.min(self.table.c.due_at)))
        if due is None:
            return None
        return min(self.poll, max(0.01, (due - utcnow()).total_seconds()))


def keep_trace(session: Session, table: sa.Table, trace: dict[str, Any]) -> str:
    """Write a trace into the outbox in the session's transaction, and nothing more; its id.
    A process that delivers nothing itself (the first start, before any service runs) keeps
    its traces so: the service's own deliverer sends them when it starts."""
    return keep_traces(session, table, [trace])[0]


def keep_traces(session: Session, table: sa.Table,
                traces: Sequence[dict[str, Any]]) -> list[str]:
    """`keep_trace` for several, in one statement; their ids in order."""
    trace_ids = [str(uuid.uuid4()) for _ in traces]
    if not traces:
        return trace_ids
    now = utcnow()
    session.execute(table.insert(), [
        {"trace_id": trace_id, "trace": json.dumps({**trace, "id": trace_id}),
         "created_at": now, "due_at": now, "attempts": 0}
        for trace_id, trace in zip(trace_ids, traces, strict=True)])
    return trace_ids


def install_outbox(app: Flask, table: sa.Table, send: Send) -> Outbox:
    """Give a service its outbox (as configured) and start this process's deliverer."""
    config = config_of(app)
    outbox = Outbox(
        db_of(app), table, send, wait=config.outbox_wait_seconds, retry=config.outbox_retry_seconds
    )
    app.extensions["vre.outbox"] = outbox
    outbox.start()
    return outbox


def outbox_of(app: Flask | None = None) -> Outbox:
    return (app or current_app).extensions["vre.outbox"]


def _forget(session: Session, pending: list[str]) -> list[str]:
    """The traces of a transaction that just ended; the session's next one starts afresh."""
    if session.info.get(_PENDING) is pending:
        del session.info[_PENDING]
    return pending
