"""The compute agent: the one process that starts, watches and stops workloads and owns their
cgroups. Web workers ask it over a Unix socket that only the platform's account may open;
they never spawn a sandbox themselves.

Workload state lives in the portal's database. At start the agent re-adopts every workload
the database says is active and marks the ones that vanished meanwhile as failed, with the
reason; then it polls the running ones and records how each ended.

It also ends desktops that must not go on (`portal.compute.lifecycle` decides): an owner
revoked, a grant ended or a dataset invalidated, a lifetime reached, nobody using it. Each
desktop's start and stop is traced through the portal's outbox in the transaction that
records it, so a tracer outage delays those traces and never loses them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from flask import Flask, jsonify, request
from sqlalchemy.orm import object_session
from werkzeug.serving import make_server

from dataset_service.client import DatasetClient, DatasetError
from portal.compute import (
    ComputeBackend,
    ComputeError,
    Exited,
    WorkloadSpec,
    backend_for,
    lifecycle,
    queue,
    spec_from_json,
    spec_to_json,
)
from portal.compute import jobs as job_records
from portal.compute.tokens import workload_token
from portal.exports import store_of
from portal.models import ACTIVE_STATES, JOB_FINAL_STATES, User, Workload, trace_outbox
from portal.revocations import revoke_workload
from tracer.client import TracerClient, checked_trace
from vre.client import ServiceError, socket_address
from vre.config import Config
from vre.db import Database, utcnow
from vre.outbox import Outbox
from vre.revocation_feed import FeedClient
from vre.service_auth import TokenSource
from vre.tokens import TokenIssuer

log = logging.getLogger("vre.compute.agent")
POLL_SECONDS = 0.25
# The queue is planned when a job arrives or ends, and also this often (estimates age).
QUEUE_SECONDS = 5.0
# A round of planning waits this many times what the last one took after it: planning a
# long queue during a burst of submissions takes at most a tenth of a core (Slurm's backfill
# pass, for comparison, runs every 30 s by default).
PLAN_PACE = 9.0
ExitHook = Callable[[Workload], None]
# How long a stop waits for the after-exit work of an end another thread recorded (a call to
# the dataset service, whose client gives up sooner).
AFTER_EXIT_WAIT_SECONDS = 30.0
TokenMinter = Callable[[Workload], str]
# Fair share forgets: usage counts half after this long (Slurm's PriorityDecayHalfLife).
FAIR_SHARE_HALF_LIFE = timedelta(days=7)
# Who a trace names for what the platform did on its own (a desktop idle, expired, revoked).
PLATFORM_ACTOR = "service:portal"
IDLE_NOTICE = ("This desktop has had no viewer for a while. It will be stopped at {at} UTC "
               "unless you open it again.")


class Watch(Protocol):
    """Where the agent learns who is revoked and which grants still hold."""

    def revoked_owners(self) -> frozenset[str]:
        """Token subjects whose workloads must stop (disabled, or revoked)."""

    def open_grants(self) -> dict[str, lifecycle.OpenGrant] | None:
        """Every grant the dataset service holds open; None when it cannot be asked."""


class OwnAccounts:
    """The portal's own records only: its disabled accounts; grants are not checked."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def revoked_owners(self) -> frozenset[str]:
        with self.db.reading() as session:
            rows = session.execute(sa.select(User.id, User.external_subject)
                                   .where(User.active.is_(False)))
            return frozenset(external or user_id for user_id, external in rows)

    def open_grants(self) -> dict[str, lifecycle.OpenGrant] | None:
        return None


class PlatformWatch(OwnAccounts):
    """The portal's disabled accounts, the people the dataset service revoked (its revocation
    feed), and the grants it holds open. While the dataset service does not answer, only the
    portal's own accounts are acted on."""

    def __init__(self, db: Database, datasets: DatasetClient, feed: FeedClient) -> None:
        super().__init__(db)
        self.datasets = datasets
        self.feed = feed

    def revoked_owners(self) -> frozenset[str]:
        owners = super().revoked_owners()
        try:
            return owners | self.feed.revocations().people
        except (ServiceError, OSError, ValueError) as exc:
            log.warning("the dataset service's revocation feed does not answer: %s", exc)
            return owners

    def open_grants(self) -> dict[str, lifecycle.OpenGrant] | None:
        try:
            grants = self.datasets.open_grants()
        except (DatasetError, ServiceError, OSError, KeyError) as exc:
            log.warning("cannot read the open grants: %s", exc)
            return None
        return {g["id"]: lifecycle.OpenGrant(g["id"], tuple(g.get("invalidated", ())))
                for g in grants}

    def end_grant(self, row: Workload) -> None:
        """The after-exit work: a workload's grant ends with it."""
        if not row.grant_id:
            return
        try:
            self.datasets.end_grant(row.grant_id)
        except DatasetError as exc:
            if exc.status != 404:
                raise


def socket_path(config: Config) -> Path:
    """Where the agent listens: a socket in a folder only the platform's account may enter."""
    return config.home / "run" / "compute-agent.sock"


def row_out(row: Workload) -> dict[str, Any]:
    """A workload as the agent answers it."""
    return {"id": row.id, "owner_id": row.owner_id, "kind": row.kind,
            "application": row.application, "flavor": row.flavor, "state": row.state,
            "reason": row.reason, "datasets": list(row.datasets), "grant_id": row.grant_id,
            "exit_status": row.exit_status, "cpu_seconds": row.cpu_seconds,
            "memory_peak_bytes": row.memory_peak_bytes,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "started_at": row.started_at.isoformat() if row.started_at else None,
            "ended_at": row.ended_at.isoformat() if row.ended_at else None,
            "stop_reason": row.stop_reason, "expires_at": _iso(row.expires_at),
            "idle_warning_at": _iso(row.idle_warning_at), "culls_at": _iso(row.culls_at),
            "last_activity_at": _iso(_activity(row).last())}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _activity(row: Workload) -> lifecycle.Activity:
    return lifecycle.Activity(started_at=row.started_at or row.created_at or utcnow(),
                              viewer_seen_at=row.viewer_seen_at, input_at=row.input_at)


def desktop_trace(row: Workload, action: str, actor: str) -> dict[str, Any]:
    """A desktop's DESKTOP_STARTED or DESKTOP_STOPPED trace: the datasets with the content
    hashes it mounted, the application and image, the flavor, the owner, and why it stopped."""
    mounts = row.spec.get("mounts", [])
    return checked_trace({
        "actor": actor, "action": action,
        "datasets": [{"id": m["dataset_id"], "hash": m["content_hash"]} for m in mounts],
        "details": {k: v for k, v in {
            "workload_id": row.id, "subject_user": row.owner_id, "tool": row.application,
            "image": row.spec.get("image") or None, "flavor": row.flavor or None,
            "reason": (row.stop_reason or "")[:500] or None}.items() if v is not None}})


def _ask(row: Workload) -> queue.Ask:
    return _ask_of(row.spec)


def _ask_of(spec: dict[str, Any]) -> queue.Ask:
    resources = spec.get("resources", {})
    return queue.Ask(cpus=float(resources.get("cpus", 1)),
                     memory_mib=int(resources.get("memory_mib", 0)),
                     gpus=int(resources.get("gpus", 0)),
                     gpu_share=int(resources.get("gpu_share", 1)))


class Agent:
    """Workloads on one backend, with their state kept in the portal's database."""

    def __init__(self, config: Config, db: Database, backend: ComputeBackend | None = None,
                 on_exit: ExitHook | None = None, outbox: Outbox | None = None,
                 watch: Watch | None = None, tokens: TokenMinter | None = None) -> None:
        self.config = config
        self.db = db
        self.backend = backend or backend_for(config)
        self.on_exit = on_exit
        self.outbox = outbox
        self.watch = watch or OwnAccounts(db)
        self.tokens = tokens
        self._lock = threading.Lock()
        self._after_exit: dict[str, threading.Event] = {}  # ends whose hook is under way
        self._queue_lock = threading.Lock()
        self._watched_at = 0.0
        self.wake = threading.Event()
        self.planned_in = 0.0  # seconds the last round took to plan (paces the rounds)
        # The last round's places and their jobs' owners, swapped whole (readers never lock).
        self._snapshot: tuple[dict[str, dict[str, Any]], dict[str, str]] = ({}, {})
        self._asks: dict[str, queue.Ask] = {}

    def reattach(self) -> dict[str, list[str]]:
        """Adopt every workload the database calls active; fail the ones that vanished."""
        adopted, vanished = [], []
        with self.db.session() as session:
            for row in session.scalars(sa.select(Workload).where(
                    Workload.state.in_(ACTIVE_STATES))):
                if row.backend_state and self.backend.adopt(row.id, row.backend_state):
                    adopted.append(row.id)
                    continue
                self._ended(row, Exited(status=-1, reason=(
                    "vanished while the compute agent was down" if row.backend_state
                    else "the agent stopped before the workload started")))
                vanished.append(row.id)
        for workload_id in vanished:
            with contextlib.suppress(ComputeError):
                self.backend.stop(workload_id, now=True)  # whatever is left of it
            self._hook(workload_id)
        return {"adopted": adopted, "vanished": vanished}

    def start(self, spec: WorkloadSpec, flavor: str, datasets: list[str],
              grant_id: str | None = None, expires_in: float | None = None,
              projects: list[str] | None = None) -> dict[str, Any]:
        """Record the workload, then start it; a refusal leaves it failed with the reason.
        A desktop expires `expires_in` seconds after it started (its flavor's longest run,
        by default the spec's), never later than the configured maximum lifetime."""
        with self.db.session() as session:
            if session.get(Workload, spec.workload_id) is not None:
                raise ComputeError("workload_exists", f"workload {spec.workload_id} exists")
            kept = spec_to_json(spec)
            kept.pop("token")
            row = Workload(id=spec.workload_id, owner_id=spec.owner, kind=spec.kind,
                           application=spec.application, flavor=flavor,
                           state="starting", reason="", datasets=datasets,
                           grant_id=grant_id, spec=kept, backend_state={},
                           cpu_seconds=0.0, memory_peak_bytes=0, projects=projects or [])
            if row.kind == "desktop":
                try:  # a desktop whose trace the tracer would refuse never starts
                    desktop_trace(row, "DESKTOP_STARTED", row.owner_id)
                except (ValueError, KeyError) as exc:
                    raise ComputeError("bad_spec", f"the desktop cannot be traced: {exc}") \
                        from None
            session.add(row)
        try:
            state = self.backend.start(spec)
        except ComputeError as exc:
            with self.db.session() as session:
                row = session.get(Workload, spec.workload_id)
                row.state, row.ended_at = "failed", utcnow()
                row.reason = f"{exc.code}: {exc.reason}"
                row.stop_reason = f"{lifecycle.FAILED}: {row.reason}"
            raise
        with self.db.session() as session:
            row = session.get(Workload, spec.workload_id)
            row.state, row.backend_state, row.started_at = "running", state, utcnow()
            if row.kind == "desktop":
                row.expires_at = lifecycle.first_expiry(
                    row.started_at, expires_in or spec.resources.max_runtime_seconds,
                    self._max_lifetime())
                self._trace(session, desktop_trace(row, "DESKTOP_STARTED", row.owner_id))
            return row_out(row)

    def stop(self, workload_id: str, now: bool = False, reason: str = lifecycle.STOPPED,
             actor: str | None = None) -> dict[str, Any]:
        """End a workload and record how it ended, why and at whose request. Answers once its
        after-exit work (its grant ended) is done, whichever thread recorded the end."""
        with self.db.session() as session:
            row = self._row(session, workload_id)
            active = row.state in ACTIVE_STATES
            if active:
                row.state = "stopping"
                row.stop_reason = row.stop_reason or reason
                row.stopped_by = row.stopped_by or actor
        if active:
            self.backend.stop(workload_id, now=now)
            self.tick()
        pending = self._after_exit.get(workload_id)
        if pending is not None:
            pending.wait(AFTER_EXIT_WAIT_SECONDS)
        with self.db.session() as session:
            return row_out(self._row(session, workload_id))

    def show(self, workload_id: str) -> dict[str, Any]:
        """A workload with its start-up progress and whether its desktop can be opened."""
        with self.db.session() as session:
            out = row_out(self._row(session, workload_id))
        if out["state"] in ACTIVE_STATES:
            out["progress"] = [asdict(p) for p in self.backend.progress(workload_id)]
            vnc = self.backend.vnc_socket(workload_id)
            out["vnc_socket"] = str(vnc) if vnc else None
        return out

    def logs(self, workload_id: str, offset: int) -> tuple[bytes, int]:
        with self.db.session() as session:
            self._row(session, workload_id)
        return self.backend.logs(workload_id, offset)

    def tick(self) -> list[str]:
        """Poll every active workload once; record the ones that ended. Answers their ids."""
        ended: list[str] = []
        try:
            with self._lock, self.db.session() as session:
                for row in session.scalars(sa.select(Workload).where(
                        Workload.state.in_(("running", "stopping")))):
                    try:
                        exited = self.backend.poll(row.id)
                    except ComputeError as exc:
                        exited = Exited(status=-1, reason=exc.reason)
                    if exited is None:
                        continue
                    try:  # one workload's end that cannot be recorded holds up no other's
                        with session.begin_nested():
                            self._ended(row, exited)
                    except Exception:
                        log.exception("recording the end of %s failed; retried next round",
                                      row.id)
                        continue
                    ended.append(row.id)
                    # Known before the end commits: whoever reads the end finds its
                    # after-exit work under way, and can wait for it (as stop does).
                    self._after_exit[row.id] = threading.Event()
            for workload_id in ended:
                self._hook(workload_id)
        finally:
            for workload_id in ended:
                self._after_exit.pop(workload_id).set()
        return ended

    def run_forever(self, stop: threading.Event) -> None:
        """Poll until asked to stop; an error in one round is logged, never fatal. Workloads
        are polled on their own clock; a poke (a job submitted or cancelled) only makes the
        queue due, so a burst of submissions costs the agent rounds of planning, not polls."""
        polled_at = planned_at = pace = 0.0
        due = True
        while not stop.is_set():
            plan_at = planned_at + (pace if due else QUEUE_SECONDS)
            wait = max(0.0, min(polled_at + POLL_SECONDS, plan_at) - time.monotonic())
            due = self.wake.wait(wait) or due
            self.wake.clear()
            if stop.is_set():
                return
            if time.monotonic() - polled_at >= POLL_SECONDS:
                polled_at = time.monotonic()
                for work in (self.tick, self.keep_deadlines, self._watch_now_and_then):
                    try:
                        found = work()
                        due = due or bool(work == self.tick and found)
                    except Exception:  # the agent outlives one bad round
                        log.exception("watching workloads failed (%s)", work.__name__)
            # The queue is planned when a job arrived or ended, and every QUEUE_SECONDS; a
            # burst of submissions is planned together, the rounds paced at PLAN_PACE times
            # what the last one took, so planning a long queue never takes more than a tenth
            # of a core.
            since = time.monotonic() - planned_at
            if (due and since >= pace) or since >= QUEUE_SECONDS:
                planned_at, due = time.monotonic(), False
                try:
                    self.dispatch()
                except Exception:
                    log.exception("planning the job queue failed")
                # Paced by the planning alone: starting the jobs it gave a turn is not
                # planning, and must not hold the next round back.
                pace = PLAN_PACE * self.planned_in

    # -- the queue of jobs -----------------------------------------------------------------
    def dispatch(self, now: datetime | None = None) -> list[str]:
        """One round of the queue: cancel the jobs whose dependencies failed, start those whose
        turn it is (fair share between owners), and keep every waiting job's place for the
        API. Answers the ids started."""
        now = now or utcnow()
        with self._queue_lock:
            began = time.monotonic()
            with self.db.session() as session:
                plan, owners = self._plan(session, now)
                for cancel in plan.cancels:
                    job_records.cancel_queued(session, cancel.job_id, cancel.reason,
                                              PLATFORM_ACTOR, self.outbox, code=cancel.code)
                started = []
                for start in plan.starts:
                    taken = session.execute(sa.update(Workload).where(
                        Workload.id == start.job_id, Workload.state == "queued").values(
                        state="starting", gpu_ids=list(start.gpu_ids))
                        .execution_options(synchronize_session=False))
                    if taken.rowcount == 1:
                        started.append(start.job_id)
                self._keep_places(plan, owners)
            self.planned_in = time.monotonic() - began
            for cancel in plan.cancels:
                self._hook(cancel.job_id)
            for job_id in started:
                self._start_job(job_id)
        return started

    def places(self, owner: str | None = None) -> dict[str, dict[str, Any]]:
        """Each waiting job's place as the last round planned it (of one owner, when given).
        Read from the round's snapshot, never waiting for a round under way."""
        places, owners = self._snapshot
        if owner is None:
            return dict(places)
        return {j: p for j, p in places.items() if owners.get(j) == owner}

    def cancel_queued(self, job_id: str, reason: str, code: str = "cancelled",
                      actor: str = PLATFORM_ACTOR) -> bool:
        """Take a waiting job out of the queue as cancelled, and end its grant."""
        with self.db.session() as session:
            done = job_records.cancel_queued(session, job_id, reason, actor, self.outbox,
                                             code=code)
        if done:
            log.info("cancelled queued job %s: %s", job_id, reason)
            self._hook(job_id)
        return done

    def pool(self) -> queue.Pool:
        """What the queue hands out to jobs: this machine's CPUs and memory (or the
        configured share of them) and its GPUs."""
        capacity = self.backend.capacity()
        return queue.Pool(cpus=self.config.job_cpus or capacity.total_cpus,
                          memory_mib=self.config.job_memory_mib or capacity.total_memory_mib,
                          gpu_ids=tuple(capacity.gpu_ids))

    def _plan(self, session: Any, now: datetime) -> tuple[queue.Plan, dict[str, str]]:
        """Plan a round from the records: only the columns the queue needs are read, and
        each job's resources once (they never change), so a queue of thousands stays cheap."""
        job = sa.and_(Workload.kind == "job")
        waiting_rows = session.execute(sa.select(
            Workload.id, Workload.owner_id, Workload.created_at, Workload.time_limit_seconds,
            Workload.depends_on).where(job, Workload.state == "queued")).all()
        running_rows = list(session.scalars(sa.select(Workload).where(
            job, Workload.state.in_(ACTIVE_STATES))))
        horizon = now - 4 * FAIR_SHARE_HALF_LIFE
        spent_rows = session.execute(sa.select(
            Workload.id, Workload.owner_id, Workload.started_at,
            Workload.time_limit_seconds).where(
            job, Workload.state.in_(JOB_FINAL_STATES), Workload.started_at.is_not(None),
            Workload.started_at >= horizon)).all()
        asks = self._asks_of(session, [r.id for r in waiting_rows] + [r.id for r in spent_rows])
        # Fair share counts what each started job reserved (its resources for its time
        # limit, from its start), as Kueue's admission fair sharing counts admitted requests:
        # the order the queue shows is then the order jobs start in, however long they run.
        spent = [queue.Spent(r.owner_id, job_records.aware(r.started_at), queue.cost(
            asks[r.id], r.time_limit_seconds or 3600)) for r in spent_rows]
        spent += [queue.Spent(r.owner_id, job_records.aware(r.started_at or r.created_at),
                              queue.cost(_ask(r), r.time_limit_seconds or 3600))
                  for r in running_rows]
        wanted = {d for r in waiting_rows for d in (r.depends_on or [])}
        finished = {job_id: state for job_id, state in session.execute(
            sa.select(Workload.id, Workload.state).where(
                Workload.id.in_(wanted), Workload.state.in_(JOB_FINAL_STATES)))} \
            if wanted else {}
        waiting = [queue.Waiting(r.id, r.owner_id, job_records.aware(r.created_at), asks[r.id],
                                 r.time_limit_seconds or 3600, tuple(r.depends_on or ()))
                   for r in waiting_rows]
        running = [queue.Running(r.id, r.owner_id,
                                 job_records.aware(r.started_at or r.created_at), _ask(r),
                                 r.time_limit_seconds or 3600, tuple(r.gpu_ids or ()))
                   for r in running_rows]
        usage = queue.decayed_usage(spent, (), now, FAIR_SHARE_HALF_LIFE)
        owners = {r.id: r.owner_id for r in waiting_rows}
        return queue.plan(waiting, running, self.pool(), usage, finished, now), owners

    def _asks_of(self, session: Any, ids: list[str]) -> dict[str, queue.Ask]:
        """What each job asks, from its spec, read once per job and kept."""
        missing = [i for i in ids if i not in self._asks]
        for start in range(0, len(missing), 500):
            for row in session.execute(sa.select(Workload.id, Workload.spec).where(
                    Workload.id.in_(missing[start:start + 500]))):
                self._asks[row.id] = _ask_of(row.spec)
        kept = {i: self._asks[i] for i in ids if i in self._asks}
        self._asks = kept if len(self._asks) > 4 * len(ids) + 1000 else self._asks
        return kept

    def _keep_places(self, plan: queue.Plan, owners: dict[str, str]) -> None:
        self._snapshot = ({p.job_id: {
            "position": p.position, "reason": p.reason, "detail": p.detail,
            "estimated_start": p.estimated_start.isoformat() if p.estimated_start else None}
            for p in plan.places}, owners)

    def _start_job(self, job_id: str) -> None:
        """Start a job the queue gave its turn; a refusal ends it failed, with the reason."""
        with self.db.session() as session:
            row = self._row(session, job_id)
            data = dict(row.spec)
            data["resources"] = {**data["resources"], "gpu_ids": list(row.gpu_ids or [])}
            data["token"] = self.tokens(row) if self.tokens else ""
            data.pop("image_digest", None)
        try:
            spec = spec_from_json(data)
            state = self.backend.start(spec)
        except ComputeError as exc:
            with self.db.session() as session:
                row = self._row(session, job_id)
                row.state, row.ended_at = "failed", utcnow()
                row.reason = f"{exc.code}: {exc.reason}"
                row.stop_reason = f"{lifecycle.FAILED}: {row.reason}"
                self._trace(session, job_records.ended_trace(row, PLATFORM_ACTOR))
            log.warning("job %s could not start: %s", job_id, exc.reason)
            self._hook(job_id)
            return
        with self.db.session() as session:
            row = self._row(session, job_id)
            row.state, row.backend_state, row.started_at = "running", state, utcnow()
            self._trace(session, job_records.started_trace(row))

    def _job_ended(self, row: Workload) -> None:
        """A job's end: why in words, the hash over its outputs, and its trace."""
        if row.stop_reason is None or row.stop_reason == lifecycle.ENDED:
            row.stop_reason = (lifecycle.ENDED if row.state == "succeeded"
                               else row.reason or lifecycle.FAILED)
        if row.reason == "stopped" and row.stop_reason:
            row.reason = row.stop_reason.split(":")[0]
        try:
            row.output_hash = self.backend.outputs(row.id).hash
        except (ComputeError, OSError) as exc:
            log.warning("cannot read the outputs of job %s: %s", row.id, exc)
        actor = row.stopped_by if row.state == "cancelled" and row.stopped_by \
            else PLATFORM_ACTOR
        try:
            trace = job_records.ended_trace(row, actor)
        except ValueError:
            try:  # as for desktops: only an actor the tracer refuses gets here
                trace = job_records.ended_trace(row, PLATFORM_ACTOR)
            except ValueError as exc:  # a job its submission never traced: recorded only
                log.error("the end of job %s cannot be traced: %s", row.id, exc,
                          extra={"event": "trace_refused"})
                return
        self._trace(object_session(row), trace)

    # -- the lifecycle of desktops ---------------------------------------------------------
    def keep_deadlines(self, now: datetime | None = None) -> list[str]:
        """Stop running desktops past their expiry, or idle past their grace; warn the idle
        ones and clear the warning of those used again. Answers the ids asked to stop."""
        now = now or utcnow()
        idle = timedelta(minutes=self.config.desktop_idle_minutes)
        grace = timedelta(minutes=self.config.desktop_idle_grace_minutes)
        stops: dict[str, str] = {}
        notices: dict[str, str | None] = {}
        with self.db.session() as session:
            for row in session.scalars(sa.select(Workload).where(
                    Workload.state == "running", Workload.kind == "desktop")):
                if row.expires_at is not None and now >= row.expires_at:
                    stops[row.id] = lifecycle.MAX_LIFETIME
                    continue
                verdict = lifecycle.idle_verdict(_activity(row), row.idle_warning_at, now,
                                                 idle, grace)
                if verdict.stop:
                    stops[row.id] = lifecycle.IDLE
                elif verdict.warning_at != row.idle_warning_at:
                    notices[row.id] = None if verdict.culls_at is None else IDLE_NOTICE.format(
                        at=verdict.culls_at.strftime("%H:%M"))
                row.idle_warning_at, row.culls_at = verdict.warning_at, verdict.culls_at
        for workload_id, text in notices.items():
            self._notify(workload_id, text)
        return [w for w, reason in stops.items() if self.stop_soon(w, reason)]

    def watch_revocations(self) -> list[str]:
        """Stop the workloads of revoked owners, and those whose grant ended or whose data was
        invalidated. Answers the ids asked to stop."""
        with self.db.reading() as session:  # the columns alone: thousands may be queued
            rows = session.execute(sa.select(
                Workload.id, Workload.owner_id, Workload.grant_id, Workload.datasets,
                Workload.state).where(Workload.state.in_(("queued", "starting", "running"))))
            active: list[lifecycle.Running] = []
            queued: set[str] = set()
            for r in rows:
                active.append(lifecycle.Running(r.id, r.owner_id, r.grant_id,
                                                tuple(r.datasets or ())))
                if r.state == "queued":
                    queued.add(r.id)
        # Grants are read after the workloads: a workload's grant is made before it is.
        open_grants = self.watch.open_grants()
        if open_grants:
            self.end_grants_left_open(set(open_grants))
        if not active:
            return []
        stops = lifecycle.must_stop(active, self.watch.revoked_owners(), open_grants)
        cancelled = [w for w, reason in stops.items() if w in queued
                     and self.cancel_queued(w, reason, code=reason)]
        return cancelled + [w for w, reason in stops.items()
                            if w not in queued and self.stop_soon(w, reason)]

    def end_grants_left_open(self, open_grants: set[str]) -> list[str]:
        """Do again the after-exit work of ended workloads whose grant is still open: the
        dataset service did not answer when they ended, or the agent was killed before it
        asked. Answers their ids."""
        ids = sorted(open_grants)
        left: list[str] = []
        with self.db.reading() as session:
            for start in range(0, len(ids), 500):
                left += session.scalars(sa.select(Workload.id).where(
                    Workload.grant_id.in_(ids[start:start + 500]),
                    Workload.ended_at.is_not(None)))
        left = [w for w in left if w not in self._after_exit]  # under way: not twice
        for workload_id in left:
            log.info("ending the grant left open by %s", workload_id)
            self._hook(workload_id)
        return left

    def stop_soon(self, workload_id: str, reason: str, actor: str = PLATFORM_ACTOR) -> bool:
        """Mark a running workload stopping, with why, and end it in the background (the
        poll records its end); False when it was not running any more."""
        with self.db.session() as session:
            row = session.get(Workload, workload_id)
            if row is None or row.state != "running":
                return False
            row.state, row.stop_reason, row.stopped_by = "stopping", reason, actor
        log.info("stopping %s: %s", workload_id, reason)
        threading.Thread(target=self._stop_quietly, args=(workload_id,), daemon=True).start()
        return True

    def extend(self, workload_id: str) -> dict[str, Any]:
        """Move a running desktop's expiry a step later, up to its maximum lifetime."""
        with self.db.session() as session:
            row = self._row(session, workload_id)
            if row.kind != "desktop" or row.state != "running" or row.expires_at is None:
                raise ComputeError("desktop_not_running", f"the desktop is {row.state}")
            try:
                row.expires_at = lifecycle.extended(
                    row.started_at or row.created_at, row.expires_at,
                    timedelta(minutes=self.config.desktop_extend_minutes), self._max_lifetime())
            except lifecycle.ExtendRefused as exc:
                raise ComputeError(exc.code, exc.reason) from None
            return row_out(row)

    def activity(self, workload_id: str, typed: bool) -> None:
        """The VNC proxy's report: a viewer is connected (and input arrived, when `typed`);
        an idle warning ends with it."""
        now = utcnow()
        with self.db.session() as session:
            row = self._row(session, workload_id)
            if row.state != "running":
                return
            row.viewer_seen_at = now
            if typed:
                row.input_at = now
            warned = row.idle_warning_at is not None
            row.idle_warning_at = row.culls_at = None
        if warned:
            self._notify(workload_id, None)

    def _watch_now_and_then(self) -> None:
        if time.monotonic() - self._watched_at >= self.config.desktop_watch_seconds:
            self._watched_at = time.monotonic()
            self.watch_revocations()

    def _stop_quietly(self, workload_id: str) -> None:
        try:
            self.backend.stop(workload_id)
            self.tick()
        except Exception:
            log.exception("stopping %s failed; the poll records it when it ends", workload_id)

    def _notify(self, workload_id: str, text: str | None) -> None:
        try:
            self.backend.notify(workload_id, text)
        except ComputeError as exc:
            log.warning("cannot tell desktop %s: %s", workload_id, exc.reason)

    def _max_lifetime(self) -> timedelta:
        return timedelta(hours=self.config.desktop_max_lifetime_hours)

    def _trace(self, session: Any, trace: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.record(session, trace)

    @staticmethod
    def _row(session: Any, workload_id: str) -> Workload:
        row = session.get(Workload, workload_id)
        if row is None:
            raise ComputeError("workload_unknown", f"no workload {workload_id}")
        return row

    def _ended(self, row: Workload, exited: Exited) -> None:
        stopped = row.state == "stopping" or exited.reason == "stopped"
        row.state = "stopped" if stopped or exited.status == 0 else "failed"
        if row.kind == "job":  # a job stopped by anyone is cancelled, with why it was
            row.state = ("cancelled" if stopped else
                         "succeeded" if exited.status == 0 else "failed")
        row.reason = exited.reason or ("" if exited.status == 0 else f"exit status {exited.status}")
        row.exit_status = exited.status
        row.cpu_seconds = exited.cpu_seconds
        row.memory_peak_bytes = exited.memory_peak_bytes
        row.ended_at = utcnow()
        if row.stop_reason is None:
            row.stop_reason = (lifecycle.ENDED if exited.status == 0 else
                               lifecycle.MAX_LIFETIME if exited.reason == "time_limit" else
                               f"{lifecycle.FAILED}: {row.reason}")
        row.idle_warning_at = row.culls_at = None
        if row.kind == "desktop":
            try:
                trace = desktop_trace(row, "DESKTOP_STOPPED", row.stopped_by or PLATFORM_ACTOR)
            except ValueError:
                # Checked at its start, so only a malformed actor gets here: the platform
                # is named instead, and the end is recorded rather than retried for ever.
                log.error("the stop of %s names an actor the tracer refuses: %r", row.id,
                          row.stopped_by, extra={"event": "trace_refused"})
                trace = desktop_trace(row, "DESKTOP_STOPPED", PLATFORM_ACTOR)
            self._trace(object_session(row), trace)
        if row.kind == "job":
            self._job_ended(row)
        # Its tokens die with it: refused until the last one issued would have expired.
        revoke_workload(object_session(row), row.id,
                        row.ended_at + timedelta(seconds=self.config.token_ttl_seconds + 60))

    def _hook(self, workload_id: str) -> None:
        if self.on_exit is None:
            return
        with self.db.session() as session:
            row = session.get(Workload, workload_id)
            try:
                self.on_exit(row)
            except Exception:
                log.exception("after-exit work for %s failed", workload_id)


_PIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
STATUS = {"not_found": 404, "not_a_file": 422, "bad_path": 422, "too_large": 413,
          "workload_unknown": 404, "workload_exists": 409, "bad_spec": 422,
          "exceeds_host": 422, "mount_refused": 422, "bad_environment": 422,
          "desktop_not_running": 409, "lifetime_limit": 409, "application_not_local": 422}


def create_app(agent: Agent) -> Flask:
    """The agent's API: start, show, stop, logs, capacity. JSON in and out."""
    app = Flask("vre-compute-agent")

    @app.errorhandler(ComputeError)
    def refused(exc: ComputeError) -> Any:
        return jsonify(code=exc.code, reason=exc.reason), STATUS.get(exc.code, 503)

    @app.post("/workloads")
    def start() -> Any:
        body = request.get_json(force=True, silent=True) or {}
        spec = spec_from_json(body.get("spec") or {})
        expires_in = body.get("expires_in")
        if expires_in is not None and (not isinstance(expires_in, int | float)
                                       or isinstance(expires_in, bool) or expires_in <= 0):
            raise ComputeError("bad_spec", "expires_in is a positive number of seconds")
        projects = body.get("projects") or []
        if not (isinstance(projects, list) and all(isinstance(p, str) for p in projects)):
            raise ComputeError("bad_spec", "projects is a list of project names")
        return jsonify(agent.start(spec, str(body.get("flavor", "")),
                                   [str(d) for d in body.get("datasets", [])],
                                   body.get("grant_id"), expires_in, projects)), 201

    @app.get("/workloads/<workload_id>")
    def show(workload_id: str) -> Any:
        return jsonify(agent.show(workload_id))

    @app.post("/workloads/<workload_id>/stop")
    def stop(workload_id: str) -> Any:
        body = request.get_json(force=True, silent=True) or {}
        reason, actor = body.get("reason", lifecycle.STOPPED), body.get("actor")
        if not isinstance(reason, str) or not isinstance(actor, str | None):
            raise ComputeError("bad_spec", "reason and actor are strings")
        return jsonify(agent.stop(workload_id, now=request.args.get("now") == "1",
                                  reason=reason[:500], actor=actor and actor[:128]))

    @app.post("/workloads/<workload_id>/extend")
    def extend(workload_id: str) -> Any:
        return jsonify(agent.extend(workload_id))

    @app.post("/workloads/<workload_id>/activity")
    def activity(workload_id: str) -> Any:
        body = request.get_json(force=True, silent=True) or {}
        agent.activity(workload_id, body.get("input") is True)
        return "", 204

    @app.get("/workloads/<workload_id>/logs")
    def logs(workload_id: str) -> Any:
        offset = request.args.get("offset", "0")
        if not offset.isdigit() or len(offset) > 15:
            raise ComputeError("bad_spec", "offset is a byte count")
        data, after = agent.logs(workload_id, int(offset))
        return app.response_class(data, mimetype="application/octet-stream",
                                  headers={"X-Next-Offset": str(after)})

    @app.get("/capacity")
    def capacity() -> Any:
        return jsonify(asdict(agent.backend.capacity()))

    @app.post("/jobs/dispatch")
    def dispatch() -> Any:
        agent.wake.set()
        return "", 202

    @app.get("/jobs/queue")
    def places() -> Any:
        return jsonify(agent.places(request.args.get("owner")))

    @app.post("/exports/<request_id>/pin")
    def pin(request_id: str) -> Any:
        """Copy files of an owner's ~/persistent into an export request, pinned."""
        body = request.get_json(force=True, silent=True) or {}
        owner, files, most = body.get("owner"), body.get("files"), body.get("max_bytes")
        if not (_PIN_ID.match(request_id) and isinstance(owner, str) and isinstance(files, list)
                and isinstance(most, int) and not isinstance(most, bool) and most > 0
                and all(isinstance(f, dict) and isinstance(f.get("path"), str)
                        and _PIN_ID.match(str(f.get("id", ""))) for f in files)):
            raise ComputeError("bad_spec", "owner, files [{id, path}] and max_bytes are needed")
        folder = store_of(agent.config) / request_id
        store_of(agent.config).mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(folder, ignore_errors=True)  # what a submission rolled back left
        folder.mkdir(mode=0o700)
        try:
            pinned = []
            for item in files:
                size, digest = agent.backend.pin(owner, item["path"], folder / item["id"], most)
                pinned.append({"id": item["id"], "path": item["path"], "size": size,
                               "sha256": digest})
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return jsonify({"files": pinned})

    @app.get("/workloads/<workload_id>/outputs")
    def outputs(workload_id: str) -> Any:
        with agent.db.reading() as session:
            agent._row(session, workload_id)
        return jsonify(agent.backend.outputs(workload_id).as_json())

    return app


class Served:
    """A running agent API and its polling thread; `close` ends both."""

    def __init__(self, agent: Agent, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.chmod(0o700)
        path.unlink(missing_ok=True)
        with socket_address(path) as address:  # a deep data directory is no matter
            self.server = make_server(f"unix://{address}", 0, create_app(agent),
                                      threaded=True)
        os.chmod(path, 0o600)
        self.stopping = threading.Event()
        self.poller = threading.Thread(target=agent.run_forever, args=(self.stopping,),
                                       daemon=True)
        self.poller.start()

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.stopping.set()

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.poller.join(timeout=5)


def serve(agent: Agent, path: Path) -> None:
    """Serve the agent's API on a Unix socket only the platform's account may open."""
    Served(agent, path).serve_forever()


def service_tokens(config: Config) -> TokenSource:
    """The portal's service tokens, as its identity makes them, for the agent's own calls
    (the dataset service's grants and feed, the tracer)."""
    from portal.identity import make_identity

    holder = Flask("vre-compute-agent")  # the local identity signs with the app's issuer
    holder.extensions["vre.issuer"] = TokenIssuer.from_file(
        config.signing_key_path, config.issuer, config.token_audience,
        config.token_ttl_seconds)
    return make_identity(config).service_tokens(holder)


def workload_tokens(config: Config) -> TokenMinter:
    """A job's own token, signed under the portal's name like a desktop's (the gateway
    renews it while the job runs)."""
    issuer = TokenIssuer.from_file(config.signing_key_path, config.portal_issuer,
                                   config.token_audience, config.token_ttl_seconds)
    return lambda row: workload_token(issuer, row.owner_id, row.id, list(row.datasets),
                                      config.token_ttl_seconds)


def main(argv: list[str] | None = None) -> None:
    """`python -m portal.compute.agent`: the process `vre up` starts."""
    from vre.config import load_config
    from vre.services import service

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    config = load_config()
    portal = service("portal")
    db = Database.for_service(config, "portal", portal.migrations)
    tokens = service_tokens(config)
    watch = PlatformWatch(db, DatasetClient(config.url_of("dataset_service"), tokens),
                          FeedClient(config.url_of("dataset_service"), tokens, timeout=3.0))
    tracer = TracerClient(config.url_of("tracer"), tokens)
    outbox = Outbox(db, trace_outbox, lambda traces, timeout: tracer.record_many(
        traces, timeout=timeout), wait=config.outbox_wait_seconds,
        retry=config.outbox_retry_seconds)
    outbox.start()
    agent = Agent(config, db, on_exit=watch.end_grant, outbox=outbox, watch=watch,
                  tokens=workload_tokens(config))
    found = agent.reattach()
    log.info("compute agent: adopted %d, vanished %d", len(found["adopted"]),
             len(found["vanished"]))
    started = time.monotonic()
    serve(agent, socket_path(config))
    log.info("compute agent ran %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
