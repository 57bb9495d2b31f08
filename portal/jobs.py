"""Batch jobs: deciding whether one may be queued (the caller's token, flavor, quota, what the
host can ever run, datasets still granted), asking the dataset service for the job's own
grant, and recording it queued with its JOB_SUBMITTED trace in one transaction. The compute
agent takes it from the queue when its turn comes; only the agent touches sandboxes.

A job submitted with a desktop's token (from inside the desktop) belongs to the desktop's
owner and works on the desktop's datasets; that token sees the jobs of its own desktop only.
A person's token sees all of their jobs."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dataset_service.client import DatasetClient, DatasetError, DatasetUnavailable
from portal import catalogues
from portal.compute import (
    ComputeError,
    DatasetMount,
    Resources,
    WorkloadSpec,
    job_outputs_inside,
    lifecycle,
    sandbox,
    spec_to_json,
)
from portal.compute.client import AgentClient
from portal.compute.jobs import (
    aware,
    cancel_queued,
    submitted_trace,
    wall_seconds,
)
from portal.compute.sandbox import HOME
from portal.desktops import (
    agent,
    agent_error,
    end_grant,
    hold_quotas,
    project_accounts,
    reserved,
    user_accounts,
)
from portal.models import (
    JOB_FINAL_STATES,
    JOB_OPEN_STATES,
    Application,
    Flavor,
    JobRecord,
    NewJob,
    Workload,
)
from portal.quotas import QUOTA_CODES, Account, HostCapacity, Requester, Usage, decide
from vre.errors import ApiError, Forbidden, NotFound, ServiceUnavailable
from vre.outbox import Outbox
from vre.tokens import Principal

DEFAULT_FLAVOR = "no-gpu"
DEFAULT_APPLICATION = "pytorch"
CANCELLED = lifecycle.CANCELLED
DEPENDENCY_FAILED = "dependency_failed"


@dataclass(frozen=True)
class JobRequest:
    """What a researcher asks for; None and empty mean the defaults."""

    command: tuple[str, ...]
    flavor: str = DEFAULT_FLAVOR
    application: str | None = None
    image: str | None = None
    name: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    time_limit_minutes: float | None = None
    after: tuple[str, ...] = ()
    idempotency_key: str | None = None
    datasets: tuple[str, ...] | None = None
    projects: tuple[str, ...] = ()


def parent_of(session: Session, principal: Principal) -> Workload | None:
    """The running desktop (or job) a workload token belongs to; None for a person's token.
    A token whose workload ended, or that names a workload of someone else, is refused."""
    if principal.workload_id is None:
        return None
    row = session.get(Workload, principal.workload_id)
    if row is None or row.owner_id != principal.subject:
        raise Forbidden("this token belongs to no workload of yours", code="workload_unknown")
    if row.state != "running":
        raise Forbidden(f"the workload this token belongs to is {row.state}; jobs are "
                        "submitted from a running desktop", code="workload_not_running")
    return row


@dataclass(frozen=True)
class Submission:
    """One submission as its request made it: who, what, and whether only to check it."""

    principal: Principal
    ask: JobRequest
    dry_run: bool = False


#: A submission's answer: the job and whether it is new, or its refusal.
Outcome = tuple[dict[str, Any], bool] | ApiError


@dataclass
class _Batch:
    """What the submissions of one transaction share: the catalogues and accounts as read
    once under their locks, and what the submissions before the current one took."""

    session: Session
    now: datetime
    applications: list[Application]
    flavors: dict[str, Flavor]
    accounts: dict[tuple[str, str], Account]
    earlier: dict[tuple[str, str], str]  # (owner, idempotency key) -> job id
    queued: dict[tuple[str, str], NewJob] = field(default_factory=dict)
    traces: list[dict[str, Any]] = field(default_factory=list)  # JOB_SUBMITTED of each queued


def _application(batch: _Batch, ask: JobRequest) -> Application:
    """The batch application the job runs: named, found by its image, or the default."""
    if ask.image:
        image, _, digest = ask.image.partition("@")
        for row in batch.applications:
            if row.enabled and row.image == image and (not digest or digest == row.image_digest):
                return row
        raise ApiError(f"image {ask.image!r} is not one of the platform's batch applications; "
                       "see `vre-job apps`", code="image_not_allowed", status=422, field="image")
    name = ask.application or DEFAULT_APPLICATION
    row = next((a for a in batch.applications if a.id == name), None)
    if row is None or not row.enabled:
        raise ApiError(f"application {name!r} is not a batch application that may run",
                       code="application_unavailable", status=422, field="application")
    return row


def _dependencies(session: Session, owner: str, after: tuple[str, ...]) -> list[str]:
    """The earlier jobs this one waits for: each must be a job of the same owner."""
    wanted = list(dict.fromkeys(after))
    if not wanted:
        return []
    found = set(session.scalars(sa.select(Workload.id).where(
        Workload.id.in_(wanted), Workload.kind == "job", Workload.owner_id == owner)))
    missing = [j for j in wanted if j not in found]
    if missing:
        raise ApiError(f"no job {missing[0]!r} of yours to wait for", code="dependency_unknown",
                       status=422, field="after")
    return wanted


def _keys_used(session: Session, items: Sequence[Submission]) -> dict[tuple[str, str], str]:
    """The jobs already submitted with the idempotency keys these submissions carry (their
    ids only: a fresh key, the usual case, loads no record)."""
    keyed = {(s.principal.subject, s.ask.idempotency_key) for s in items
             if s.ask.idempotency_key is not None}
    if not keyed:
        return {}
    rows = session.execute(_KEYS_USED, {"owners": sorted({o for o, _ in keyed}),
                                        "keys": sorted({k for _, k in keyed})})
    return {(o, k): j for o, k, j in rows if (o, k) in keyed}


# Built once: each group of submissions asks it.
_KEYS_USED = sa.select(Workload.owner_id, Workload.idempotency_key, Workload.id).where(
    Workload.owner_id.in_(sa.bindparam("owners", expanding=True)),
    Workload.idempotency_key.in_(sa.bindparam("keys", expanding=True)))


def submit_all(session: Session, items: Sequence[Submission], datasets_service: DatasetClient,
               host: HostCapacity, now: datetime, outbox: Outbox | None) -> list[Outcome]:
    """Decide and queue submissions that arrived together, in one transaction (committed
    here); each its job and whether it is new (False for a repeated idempotency key), or its
    refusal. Each is checked in order (token, flavor, allowed, quota, capacity, datasets)
    against what those before it took; a refusal leaves no row, no grant and no trace, and is
    that submission's answer alone; an error of the database fails them all and ends the
    grants made for them."""
    for attempt in range(3):
        granted: list[str] = []
        try:
            outcomes = _submit_all(session, items, datasets_service, host, now, outbox,
                                   granted)
            session.commit()  # here: a commit that fails ends the grants made for it
            return outcomes
        except IntegrityError:
            # The same idempotency key, submitted at the same moment from another process:
            # nothing of this transaction stays; the next attempt answers its job.
            session.rollback()
            for grant_id in granted:
                end_grant(datasets_service, grant_id)
            if attempt == 2:
                raise
        except BaseException:
            for grant_id in granted:
                end_grant(datasets_service, grant_id)
            raise
    raise AssertionError("unreachable")


class GroupCommit:
    """Submissions that arrive while others are being recorded wait for them, then go
    together in one transaction (one lock, one read of the catalogues and accounts, one
    commit), as a database's group commit does: a lone submission goes at once, and a burst
    costs far less than its submissions one by one. The thread of the first waiting request
    records its group; no thread of its own is kept. During a burst it waits a moment for
    more to join first (as a producer batching messages lingers): the burst is recorded in
    fewer, larger transactions."""

    MOST = 64  # submissions one transaction takes
    # During a burst (the last group held more than one), the one to lead the next group
    # waits this long for more to join it first: the requests the last group answered come
    # back meanwhile, and a group's fixed cost (its locks, reads and commit) is shared by more.
    LINGER_SECONDS = 0.005

    def __init__(self, record: Callable[[list[Submission]], list[Outcome]]) -> None:
        self._record = record
        self._lock = threading.Lock()
        self._full = threading.Condition(self._lock)  # a lingering leader's group is full
        self._waiting: list[_Waiting] = []
        self._busy = False
        self._burst = False
        self._lingering = False

    @property
    def waiting(self) -> int:
        """Submissions waiting for their group to be recorded."""
        with self._lock:
            return len(self._waiting)

    def submit(self, item: Submission) -> Outcome:
        """Record one submission with whatever came meanwhile; its outcome (the error that
        failed its recording re-raised)."""
        mine = _Waiting(item)
        with self._lock:
            self._waiting.append(mine)
            leads = not self._busy
            self._busy = True
            if self._lingering and len(self._waiting) >= self.MOST:
                self._full.notify()
        if not leads:
            mine.wait()
            if not mine.leads:
                return mine.answer()
        with self._lock:
            if self._burst and len(self._waiting) < self.MOST:
                self._lingering = True
                self._full.wait(self.LINGER_SECONDS)
                self._lingering = False
            group, self._waiting = self._waiting[:self.MOST], self._waiting[self.MOST:]
            self._burst = len(group) > 1
        try:
            outcomes: list[Any] = self._record([w.item for w in group])
        except Exception as exc:
            outcomes = self._one_by_one(group) if len(group) > 1 else [exc]
        except BaseException as exc:  # each waiting request answers it as its own
            outcomes = [exc] * len(group)
        finally:
            with self._lock:
                if self._waiting:  # the next group is led by its first
                    self._waiting[0].leads = True
                    self._waiting[0].wake()
                else:
                    self._busy = False
        for waiting, outcome in zip(group, outcomes, strict=True):
            waiting.outcome = outcome
            if waiting is not mine:
                waiting.wake()
        return mine.answer()

    def _one_by_one(self, group: list[_Waiting]) -> list[Any]:
        """A group whose transaction failed, recorded again one submission at a time: one
        that breaks a transaction fails alone, not with those that came with it."""
        outcomes: list[Any] = []
        for waiting in group:
            try:
                outcomes.extend(self._record([waiting.item]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


class _Waiting:
    """A submission waiting for its group: woken once, to lead the next group or with its
    outcome. A lock taken at birth is its signal (lighter than an Event, which builds a
    condition for each wait: one for each submission of a burst)."""

    __slots__ = ("_signal", "item", "leads", "outcome")

    def __init__(self, item: Submission) -> None:
        self.item = item
        self.leads = False
        self.outcome: Outcome | BaseException | None = None
        self._signal = threading.Lock()
        self._signal.acquire()

    def wait(self) -> None:
        self._signal.acquire()

    def wake(self) -> None:
        self._signal.release()

    def answer(self) -> Outcome:
        if isinstance(self.outcome, BaseException) and not isinstance(self.outcome, ApiError):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


def _submit_all(session: Session, items: Sequence[Submission], datasets_service: DatasetClient,
                host: HostCapacity, now: datetime, outbox: Outbox | None,
                granted: list[str]) -> list[Outcome]:
    people = [s for s in items if not s.principal.is_service]
    owners = {s.principal.subject for s in people}
    projects = {p for s in people for p in s.ask.projects}
    hold_quotas(session, owners, projects)
    flavors = {f.name: f for f in catalogues.flavors(session)}
    accounts = {("user", a.subject): a
                for a in user_accounts(session, owners, now, flavors).values()}
    accounts.update({("project", a.subject): a
                     for a in project_accounts(session, projects, now, flavors)})
    batch = _Batch(session, now, catalogues.applications(session, "batch"), flavors,
                   accounts, _keys_used(session, people))
    outcomes: list[Outcome] = []
    planned: list[_Planned] = []
    for index, item in enumerate(items):
        try:
            outcome = _decide_one(batch, item, host)
        except ApiError as exc:
            outcome = exc
        if isinstance(outcome, _Planned):
            outcome.index = index
            planned.append(outcome)
            outcome = ({}, True)  # answered once granted
        outcomes.append(outcome)
    # Grants go to the dataset service together, after every decision (none is asked for a
    # submission refused). One refused gives back what its submission took: the submissions
    # that were refused for a quota meanwhile are decided again, after the others, as if they
    # had come last (a serial order of submissions that arrived together).
    gave_back = False
    grants = _made(_grants(datasets_service, planned), granted)
    for plan, grant in zip(planned, grants, strict=True):
        outcome = _finish(batch, plan, grant, datasets_service, granted)
        gave_back |= isinstance(outcome, ApiError)
        outcomes[plan.index] = outcome
    if gave_back:
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ApiError) and outcome.code in QUOTA_CODES:
                outcomes[index] = _submit_alone(batch, items[index], host, datasets_service,
                                                granted)
    if batch.queued:
        session.execute(sa.insert(Workload.__table__), [j.values() for j in batch.queued.values()])
        if outbox is not None:
            outbox.record_all(session, batch.traces, at_once=False)
    return outcomes


@dataclass(eq=False)
class _Planned:
    """A submission allowed and charged to its accounts, waiting for its grant."""

    principal: Principal
    job: NewJob
    application: Application
    charged: list[tuple[str, str]]
    taken: Usage
    index: int = -1


def _submit_alone(batch: _Batch, item: Submission, host: HostCapacity,
                  datasets_service: DatasetClient, granted: list[str]) -> Outcome:
    try:
        outcome = _decide_one(batch, item, host)
    except ApiError as exc:
        return exc
    if not isinstance(outcome, _Planned):
        return outcome
    return _finish(batch, outcome, _made(_grants(datasets_service, [outcome]), granted)[0],
                   datasets_service, granted)


def _made(grants: list[dict[str, Any] | ApiError | None],
          granted: list[str]) -> list[dict[str, Any] | ApiError | None]:
    """The grants, each made one listed in `granted` first: ended if anything fails after."""
    granted.extend(g["id"] for g in grants if isinstance(g, dict))
    return grants


def _decide_one(batch: _Batch, item: Submission,
                host: HostCapacity) -> _Planned | tuple[dict[str, Any], bool]:
    """Check one submission in order (token, flavor, allowed, quota, capacity, its own
    fields) and charge its accounts; what is left is its grant. A dry run, or a key used
    before, is answered at once."""
    principal, ask = item.principal, item.ask
    if principal.is_service:
        raise Forbidden("jobs are submitted by people or their desktops", code="not_a_person")
    session, owner = batch.session, principal.subject
    parent = parent_of(session, principal)
    if ask.idempotency_key is not None:
        key = (owner, ask.idempotency_key)
        if key in batch.queued:
            return job_out(batch.queued[key]), False
        if key in batch.earlier:
            return job_out(session.get(Workload, batch.earlier[key])), False
    application = _application(batch, ask)
    row = batch.flavors.get(ask.flavor)
    spec = catalogues.spec_of(row) if row is not None else None
    charged = [("user", owner), *(("project", p) for p in sorted(set(ask.projects)))]
    decide("job", spec, Requester.of(principal.roles, ask.projects),
           [batch.accounts[a] for a in charged], host,
           flavor_name=ask.flavor).raise_if_refused()
    assert row is not None
    limit = round((ask.time_limit_minutes or row.max_runtime_minutes) * 60)
    if limit > row.max_runtime_minutes * 60:
        raise ApiError(f"flavor {row.name!r} runs a job at most {row.max_runtime_minutes} "
                       "minutes", code="time_limit_too_long", status=422,
                       field="time_limit_minutes")
    try:
        sandbox.check_environment(ask.environment)
    except ValueError as exc:
        raise ApiError(str(exc), code="bad_environment", status=422,
                       field="environment") from None
    datasets = _datasets(parent, ask)
    after = _dependencies(session, owner, ask.after)
    workload_id = "j" + uuid.uuid4().hex[:16]
    job = NewJob(id=workload_id, owner_id=owner, application=application.id, flavor=row.name,
                 datasets=list(datasets), projects=sorted(set(ask.projects)), name=ask.name,
                 parent_id=parent.id if parent else None, depends_on=after,
                 idempotency_key=ask.idempotency_key, time_limit_seconds=limit,
                 created_at=batch.now)
    resources = Resources(cpus=row.cpus, memory_mib=row.memory_mib, gpus=row.gpus,
                          max_runtime_seconds=limit, gpu_share=row.gpu_share or 1)
    kept = spec_to_json(WorkloadSpec(
        workload_id=workload_id, owner=owner, kind="job", application=application.id,
        command=ask.command, resources=resources, environment=dict(ask.environment),
        image=application.image))
    kept.pop("token")
    kept["image_digest"] = application.image_digest
    job.spec = kept
    if item.dry_run:
        return job_out(job), True
    plan = _Planned(principal, job, application, charged, reserved(row, 1, limit))
    _charge(batch, plan, +1)
    batch.queued[(owner, ask.idempotency_key or workload_id)] = job
    return plan


def _charge(batch: _Batch, plan: _Planned, sign: int) -> None:
    """Count what a planned job takes against its accounts (-1: give it back)."""
    for name in plan.charged:
        account = batch.accounts[name]
        usage = account.usage + plan.taken if sign > 0 else account.usage - plan.taken
        batch.accounts[name] = replace(account, usage=usage)


def _grants(datasets_service: DatasetClient,
            planned: Sequence[_Planned]) -> list[dict[str, Any] | ApiError | None]:
    """Each planned job's grant (None for a job on no dataset), or its refusal: proof that
    its datasets are still granted now, and their content hashes, pinned for the job's whole
    life. Asked of the dataset service in one request when there are several (one
    transaction there too)."""
    asking = [p for p in planned if p.job.datasets]
    bodies = [_grant_body(p) for p in asking]
    answers: list[dict[str, Any] | ApiError] = []
    try:
        if len(bodies) == 1:
            answers = [datasets_service.create_grant(bodies[0])]
        elif bodies:
            answers = [a["grant"] if a.get("error") is None else ApiError(
                a["error"]["message"], code=a["error"]["code"], status=a["error"]["status"],
                details=a["error"].get("details"))
                for a in datasets_service.create_grants(bodies)]
    except DatasetError as exc:
        answers = [_refusal(exc)] * len(bodies)
    found = dict(zip(asking, answers, strict=True))
    return [found.get(p) for p in planned]


def _grant_body(plan: _Planned) -> dict[str, Any]:
    return {"user_id": plan.job.owner_id, "user_roles": sorted(plan.principal.roles),
            "workload_id": plan.job.id, "purpose": "job", "datasets": list(plan.job.datasets),
            "tool": plan.application.id, "flavor": plan.job.flavor,
            "image": plan.application.image}


def _refusal(exc: DatasetError) -> ApiError:
    """The dataset service's refusal (or silence) as a job's."""
    if isinstance(exc, DatasetUnavailable):
        return ServiceUnavailable("the dataset service does not answer; try again",
                                  code="datasets_unavailable")
    return ApiError(exc.message, code=exc.code or "grant_refused", status=exc.status,
                    details=exc.details)


def _finish(batch: _Batch, plan: _Planned, grant: dict[str, Any] | ApiError | None,
            datasets_service: DatasetClient, granted: list[str]) -> Outcome:
    """The submission's answer once its grant came: queued with its JOB_SUBMITTED trace, or
    refused (giving back what it took)."""
    job = plan.job
    if grant is not None and not isinstance(grant, ApiError):
        job.grant_id = grant["id"]
        job.spec = {**job.spec, "mounts": [_mount(m) for m in grant.get("mounts", [])]}
    else:
        job.spec = {**job.spec, "mounts": []}
    try:
        if isinstance(grant, ApiError):
            raise grant
        try:
            trace = submitted_trace(job)
        except ValueError as exc:
            if job.grant_id:
                granted.remove(job.grant_id)
                end_grant(datasets_service, job.grant_id)
            raise ApiError(f"the job cannot be traced: {exc}", code="bad_job",
                           status=422) from None
    except ApiError as exc:
        _charge(batch, plan, -1)
        batch.queued = {k: j for k, j in batch.queued.items() if j is not job}
        return exc
    batch.traces.append(trace)
    return job_out(job), True


def _datasets(parent: Workload | None, ask: JobRequest) -> tuple[str, ...]:
    """The datasets a job works on: its desktop's (or the part of them it names), or those a
    person names."""
    if parent is None:
        return tuple(dict.fromkeys(ask.datasets or ()))
    if ask.datasets is None:
        return tuple(parent.datasets)
    outside = [d for d in ask.datasets if d not in parent.datasets]
    if outside:
        raise Forbidden(f"dataset {outside[0]!r} is not mounted in the desktop this job comes "
                        "from", code="dataset_not_in_workload")
    return tuple(dict.fromkeys(ask.datasets))


def _mount(m: dict[str, Any]) -> dict[str, Any]:
    return {"dataset_id": m["dataset_id"], "name": m["name"], "version": str(m["version"]),
            "content_hash": m["content_hash"], "tree": m["tree"],
            "project": m.get("project", "")}


def mounts_of(row: Workload) -> tuple[DatasetMount, ...]:
    return tuple(DatasetMount(**m) for m in row.spec.get("mounts", []))


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment else None


def job_out(row: JobRecord, place: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as the API answers it."""
    run = wall_seconds(row)
    return {
        "id": row.id, "name": row.name or "", "owner_id": row.owner_id, "state": row.state,
        "reason": row.reason or "", "stop_reason": row.stop_reason,
        "application": row.application, "image": row.spec.get("image", ""),
        "image_digest": row.spec.get("image_digest"), "flavor": row.flavor,
        "command": list(row.spec.get("command", [])),
        "environment": dict(row.spec.get("environment", {})),
        "time_limit_minutes": round((row.time_limit_seconds or 0) / 60, 3),
        "after": list(row.depends_on or []), "desktop_id": row.parent_id,
        "datasets": [{"id": m["dataset_id"], "name": m["name"], "version": m["version"],
                      "content_hash": m["content_hash"]} for m in row.spec.get("mounts", [])]
        or [{"id": d, "name": d, "version": "", "content_hash": ""} for d in row.datasets],
        "submitted_at": _iso(row.created_at), "started_at": _iso(row.started_at),
        "ended_at": _iso(row.ended_at), "exit_status": row.exit_status,
        "wall_seconds": None if run is None else round(run, 3),
        "cpu_seconds": round(row.cpu_seconds or 0.0, 3),
        "memory_peak_bytes": row.memory_peak_bytes or 0, "gpus": list(row.gpu_ids or []),
        "gpu_hours": round((run or 0.0) * len(row.gpu_ids or []) / 3600, 6),
        "queue": place if row.state == "queued" else None,
        "outputs": "~" + job_outputs_inside(row.id).removeprefix(HOME),
        "output_hash": row.output_hash}


def visible(session: Session, principal: Principal, job_id: str) -> Workload:
    """A job its owner may see (from a desktop: that desktop's jobs only); an
    administrator sees any; every other reads as not found."""
    row = session.get(Workload, job_id)
    if row is None or row.kind != "job" or not _sees(principal, row):
        raise NotFound(f"no job {job_id!r}", code="job_unknown", field="job_id")
    return row


def _sees(principal: Principal, row: Workload) -> bool:
    if principal.workload_id is not None:
        return row.owner_id == principal.subject and principal.workload_id in (
            row.parent_id, row.id)
    return row.owner_id == principal.subject or principal.has_any("admin")


def listing(session: Session, principal: Principal, which: str, limit: int,
            places: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The caller's jobs: `active` (queued in queue order, then running), `ended` (newest
    first) or `all`."""
    query = sa.select(Workload).where(Workload.kind == "job",
                                      Workload.owner_id == principal.subject)
    if principal.workload_id is not None:
        query = query.where(Workload.parent_id == principal.workload_id)
    if which == "active":
        query = query.where(Workload.state.in_(JOB_OPEN_STATES))
    elif which == "ended":
        query = query.where(Workload.state.in_(JOB_FINAL_STATES))
    rows = list(session.scalars(query.order_by(Workload.created_at.desc(), Workload.id)
                                .limit(limit)))
    if which == "active":
        far = 1 << 60
        rows.sort(key=lambda r: (r.state != "queued",
                                 places.get(r.id, {}).get("position") or far,
                                 aware(r.created_at)))
    return [job_out(r, places.get(r.id)) for r in rows]


# -- ending -------------------------------------------------------------------------------

def cancel(session: Session, principal: Principal, job_id: str,
           datasets_service: DatasetClient, outbox: Outbox | None) -> dict[str, Any]:
    """Cancel a job of the caller's: a queued one at once, a running one through the agent
    (which records how it ended); an ended one is refused."""
    row = visible(session, principal, job_id)
    if row.owner_id != principal.subject and not principal.has_any("admin"):
        raise Forbidden("only the job's owner may cancel it", code="not_the_owner")
    actor = principal.subject
    if row.state == "queued":
        if cancel_queued(session, row.id, CANCELLED, actor, outbox):
            session.commit()
            end_grant(datasets_service, row.grant_id)
            session.refresh(row)
            return job_out(row)
        session.refresh(row)  # the agent took it meanwhile: stop it as a running one
    if row.state in JOB_FINAL_STATES:
        raise ApiError(f"job {job_id} has already ended ({row.state})", code="job_ended",
                       status=409)
    try:
        agent().stop(job_id, reason=CANCELLED, actor=actor)
    except ComputeError as exc:
        raise agent_error(exc) from None
    session.expire_all()
    return job_out(session.get(Workload, job_id))


def outputs(principal: Principal, session: Session, job_id: str) -> dict[str, Any]:
    """The manifest of a job's output folder, and where it is inside a workload."""
    row = visible(session, principal, job_id)
    if row.state == "queued" or (row.state == "cancelled" and row.started_at is None):
        files: dict[str, Any] = {"files": [], "manifest_hash": None, "truncated": False}
    else:
        try:
            files = agent().outputs(job_id)
        except ComputeError as exc:
            raise agent_error(exc) from None
    return {"job_id": row.id, "folder": job_out(row)["outputs"], **files,
            "recorded_hash": row.output_hash}


def logs(principal: Principal, session: Session, job_id: str,
         offset: int) -> tuple[bytes, int, str]:
    """Log bytes from `offset`, the next offset, and the job's state (a follower stops once
    the state is final and nothing more came)."""
    row = visible(session, principal, job_id)
    if row.state == "queued" or row.backend_state == {}:
        return b"", offset, row.state
    try:
        data, after = agent().logs(job_id, offset)
    except ComputeError as exc:
        if exc.code == "workload_unknown":
            return b"", offset, row.state
        raise agent_error(exc) from None
    session.refresh(row)
    return data, after, row.state


class _Poker:
    """Tells the agent that the queue moved, from a thread of its own: a submission does not
    wait for the agent's answer, and a burst of submissions sends one poke while the last is
    under way or for a moment after it (the agent plans at its own pace anyway). The thread
    ends after a quiet second (no thread is left to a fork)."""

    QUIET_SECONDS = 1.0
    GAP_SECONDS = 0.02  # at most one poke this often; a lone submission's goes at once

    def __init__(self) -> None:
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._client: AgentClient | None = None

    def poke(self, client: AgentClient) -> None:
        with self._lock:
            self._client = client
            self._due.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vre-agent-poke",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            if not self._due.wait(self.QUIET_SECONDS):
                with self._lock:
                    if not self._due.is_set():
                        self._thread = None
                        return
            self._due.clear()
            client = self._client
            if client is not None:
                with contextlib.suppress(ComputeError):
                    client.dispatch_soon()
                time.sleep(self.GAP_SECONDS)


_poker = _Poker()


def poke_agent() -> None:
    """Tell the agent a job is waiting (or left), so it need not wait for its next round."""
    _poker.poke(agent())


def queue_places(owner: str | None) -> dict[str, dict[str, Any]]:
    """Each waiting job's place in the queue as the agent sees it now (empty while the agent
    does not answer: positions are then unknown, never made up)."""
    try:
        return agent().queue(owner)
    except ComputeError:
        return {}

