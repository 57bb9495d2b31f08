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
from dataclasses import dataclass, field
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
    user_account,
)
from portal.models import JOB_FINAL_STATES, JOB_OPEN_STATES, Application, Workload
from portal.quotas import HostCapacity, Requester, decide
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


def _application(session: Session, ask: JobRequest) -> Application:
    """The batch application the job runs: named, found by its image, or the default."""
    if ask.image:
        image, _, digest = ask.image.partition("@")
        for row in catalogues.applications(session, "batch"):
            if row.enabled and row.image == image and (not digest or digest == row.image_digest):
                return row
        raise ApiError(f"image {ask.image!r} is not one of the platform's batch applications; "
                       "see `vre-job apps`", code="image_not_allowed", status=422, field="image")
    name = ask.application or DEFAULT_APPLICATION
    try:
        row = catalogues.application(session, name)
    except NotFound:
        row = None
    if row is None or row.kind != "batch" or not row.enabled:
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


def _existing(session: Session, owner: str, key: str | None) -> Workload | None:
    """The owner's job submitted with this idempotency key, if any (its id is read first:
    a fresh key, the usual case, loads no record)."""
    if key is None:
        return None
    job_id = session.scalar(sa.select(Workload.id).where(Workload.owner_id == owner,
                                                         Workload.idempotency_key == key))
    return None if job_id is None else session.get(Workload, job_id)


def submit(session: Session, principal: Principal, ask: JobRequest,
           datasets_service: DatasetClient, host: HostCapacity, now: datetime,
           outbox: Outbox | None, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
    """Queue a job; answers it and whether it is new (False for a repeated idempotency key).
    Checked in order: token, flavor, allowed, quota, capacity, datasets; a refusal leaves no
    row, no grant and no trace."""
    if principal.is_service:
        raise Forbidden("jobs are submitted by people or their desktops", code="not_a_person")
    owner = principal.subject
    hold_quotas(session, owner, ask.projects)
    parent = parent_of(session, principal)
    earlier = _existing(session, owner, ask.idempotency_key)
    if earlier is not None:
        return job_out(earlier), False
    application = _application(session, ask)
    flavors = {f.name: f for f in catalogues.flavors(session)}
    row = flavors.get(ask.flavor)
    spec = catalogues.spec_of(row) if row is not None else None
    accounts = [user_account(session, owner, now, flavors),
                *project_accounts(session, ask.projects, now, flavors)]
    decide("job", spec, Requester.of(principal.roles, ask.projects), accounts, host,
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
    job = Workload(id=workload_id, owner_id=owner, kind="job", application=application.id,
                   flavor=row.name, state="queued", reason="", datasets=list(datasets),
                   grant_id=None, backend_state={}, cpu_seconds=0.0, memory_peak_bytes=0,
                   name=ask.name, parent_id=parent.id if parent else None, depends_on=after,
                   idempotency_key=ask.idempotency_key, time_limit_seconds=limit,
                   gpu_ids=[], created_at=now, projects=sorted(set(ask.projects)))
    resources = Resources(cpus=row.cpus, memory_mib=row.memory_mib, gpus=row.gpus,
                          max_runtime_seconds=limit, gpu_share=row.gpu_share or 1)
    kept = spec_to_json(WorkloadSpec(
        workload_id=workload_id, owner=owner, kind="job", application=application.id,
        command=ask.command, resources=resources, environment=dict(ask.environment),
        image=application.image))
    kept.pop("token")
    kept["image_digest"] = application.image_digest
    job.spec = kept
    if dry_run:
        return job_out(job), True
    grant = _grant(datasets_service, owner, principal, workload_id, datasets, application,
                   row.name)
    job.grant_id = grant["id"] if grant else None
    job.spec = {**kept, "mounts": [_mount(m) for m in (grant or {}).get("mounts", [])]}
    try:
        trace = submitted_trace(job)
    except ValueError as exc:
        end_grant(datasets_service, job.grant_id)
        raise ApiError(f"the job cannot be traced: {exc}", code="bad_job", status=422) from None
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # the same key, submitted at the same moment: answer the first
        session.rollback()  # the transaction has written nothing else yet
        end_grant(datasets_service, job.grant_id)
        earlier = _existing(session, owner, ask.idempotency_key)
        if earlier is None:
            raise
        return job_out(earlier), False
    if outbox is not None:
        outbox.record(session, trace, at_once=False)
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


def _grant(datasets_service: DatasetClient, owner: str, principal: Principal,
           workload_id: str, datasets: tuple[str, ...], application: Application,
           flavor: str) -> dict[str, Any] | None:
    """The job's own grant: proof that its datasets are still granted now, and their content
    hashes, pinned for the job's whole life."""
    if not datasets:
        return None
    try:
        return datasets_service.create_grant({
            "user_id": owner, "user_roles": sorted(principal.roles),
            "workload_id": workload_id, "purpose": "job", "datasets": list(datasets),
            "tool": application.id, "flavor": flavor, "image": application.image})
    except DatasetUnavailable:
        raise ServiceUnavailable("the dataset service does not answer; try again",
                                 code="datasets_unavailable") from None
    except DatasetError as exc:
        raise ApiError(exc.message, code=exc.code or "grant_refused", status=exc.status,
                       details=exc.details) from None


def _mount(m: dict[str, Any]) -> dict[str, Any]:
    return {"dataset_id": m["dataset_id"], "name": m["name"], "version": str(m["version"]),
            "content_hash": m["content_hash"], "tree": m["tree"],
            "project": m.get("project", "")}


def mounts_of(row: Workload) -> tuple[DatasetMount, ...]:
    return tuple(DatasetMount(**m) for m in row.spec.get("mounts", []))


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment else None


def job_out(row: Workload, place: dict[str, Any] | None = None) -> dict[str, Any]:
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

