"""Desktops: deciding whether one may start (application, flavor, quotas, what the backend
can run, datasets still granted), asking the dataset service for the grant, minting the
desktop's own token, and handing the whole spec to the compute agent; and ending one, which
ends its grant with it. Web workers run this; only the agent touches sandboxes."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from dataset_service.client import DatasetClient, DatasetError, DatasetUnavailable
from portal import catalogues
from portal.compute import ComputeError, DatasetMount, Resources, WorkloadSpec, lifecycle
from portal.compute.agent import socket_path
from portal.compute.client import AgentClient
from portal.compute.tokens import workload_token
from portal.models import ACTIVE_STATES, Flavor, Workload
from portal.quotas import Account, Decision, HostCapacity, Requester, Usage, decide
from vre.db import UtcDateTime, seconds_between, utcnow
from vre.errors import ApiError, Forbidden, NotFound, ServiceUnavailable
from vre.tokens import Principal
from vre.web import config_of

AGENT_STATUS = {"agent_unavailable": 503, "exceeds_host": 422, "mount_refused": 409,
                "bad_environment": 422, "workload_exists": 409, "workload_unknown": 404,
                "desktop_not_running": 409, "lifetime_limit": 409,
                "application_not_local": 422, "not_found": 404, "not_a_file": 422,
                "bad_path": 422, "too_large": 413, "outputs_refused": 409}


@dataclass(frozen=True)
class DesktopRequest:
    """What a researcher asks for."""

    application: str
    flavor: str
    datasets: tuple[str, ...]
    projects: tuple[str, ...] = ()


def agent() -> AgentClient:
    return AgentClient(socket_path(config_of()))


def agent_error(exc: ComputeError) -> ApiError:
    """A refusal of the compute agent as the API answers it, with its status."""
    return ApiError(exc.reason, code=exc.code, status=AGENT_STATUS.get(exc.code, 502))


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def usages_of(session: Session, owners: Iterable[str], now: datetime,
              flavors: dict[str, Flavor] | None = None) -> dict[str, Usage]:
    """What each of several users runs now and has used this month, from the workloads the
    agent recorded, in one statement (`flavors` by name, when the caller read them already)."""
    wanted = sorted(set(owners))
    found = _usages(session, "owners", {"owners": wanted}, now, flavors)
    return {owner: found.get(owner, Usage()) for owner in wanted}


def reserved(flavor: Flavor, count: int, seconds: float) -> Usage:
    """What `count` queued jobs of a flavor hold: a place each among the jobs allowed, and
    the most they may use of the month's budget (their time limits, `seconds` together), so
    jobs queued together never overrun it."""
    return Usage(jobs=count, cpu_hours=seconds / 3600 * flavor.cpus,
                 gpu_hours=seconds / 3600 * _gpus_held(flavor))


#: What `_usages` sums: each of several users' workloads, or those charged to one project.
UsageShape = Literal["owners", "project"]


def _usages(session: Session, shape: UsageShape, values: dict[str, Any], now: datetime,
            flavors: dict[str, Flavor] | None) -> dict[str | None, Usage]:
    """What the workloads of one shape of `_usage_statements` (its parameters in `values`)
    run now and used this month, summed for each owner ('owners') or all together under
    None ('project')."""
    if flavors is None:
        flavors = {f.name: f for f in catalogues.flavors(session)}
    waiting, ran = _usage_statements(shape)
    values = {**values, "since": month_start(now), "now": now}
    totals: dict[str | None, Usage] = {}
    for subject, name, count, seconds in session.execute(waiting, values):
        flavor = flavors.get(name)
        used = reserved(flavor, count, seconds) if flavor else Usage(jobs=count)
        totals[subject] = totals.get(subject, Usage()) + used
    for subject, state, kind, name, count, ran_seconds in session.execute(ran, values):
        flavor = flavors.get(name)
        used = Usage()
        if state in ACTIVE_STATES:
            used = Usage(desktops=count if kind == "desktop" else 0,
                         jobs=count if kind == "job" else 0,
                         gpus=count * flavor.gpus if flavor else 0)
        if flavor and ran_seconds:
            hours = float(ran_seconds) / 3600
            used = used + Usage(cpu_hours=hours * flavor.cpus,
                                gpu_hours=hours * _gpus_held(flavor))
        totals[subject] = totals.get(subject, Usage()) + used
    return totals


@functools.cache
def _usage_statements(shape: UsageShape) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The two statements `_usages` runs, built once for each shape: building them took
    longer than running them, and every submission, start and flavor listing runs them.
    'owners': the workloads of the users :owners, summed per owner; 'project': those
    charged to one project (:charged, a pattern of its quoted name), summed together."""
    if shape not in ("owners", "project"):
        raise ValueError(f"no usage statements of shape {shape!r}")
    if shape == "owners":
        whose = Workload.owner_id.in_(sa.bindparam("owners", expanding=True))
        key: sa.ColumnElement[Any] = Workload.owner_id
        keys: tuple[sa.ColumnElement[Any], ...] = (Workload.owner_id,)
    else:
        whose = sa.cast(Workload.projects, sa.Text).like(sa.bindparam("charged"))
        key, keys = sa.null(), ()
    # The waiting jobs, grouped by the database a flavor: a researcher may have thousands,
    # read from an index of the waiting alone (ix_workloads_queued).
    waiting = (sa.select(key, Workload.flavor, sa.func.count(),
                         sa.func.coalesce(sa.func.sum(Workload.time_limit_seconds), 0))
               .where(whose, Workload.state == "queued").group_by(*keys, Workload.flavor))
    # What ran this month, its time summed by the database a state, kind and flavor: a
    # researcher may have run thousands of jobs since the month began.
    since = sa.bindparam("since", type_=UtcDateTime())
    now = sa.bindparam("now", type_=UtcDateTime())
    ran = seconds_between(
        sa.case((sa.or_(Workload.state.in_(ACTIVE_STATES), Workload.ended_at.is_(None)),
                 now), else_=Workload.ended_at),
        sa.case((Workload.started_at < since, since), else_=Workload.started_at))
    seconds = sa.func.coalesce(sa.func.sum(sa.case(
        (sa.and_(Workload.started_at.is_not(None), ran > 0), ran), else_=0.0)), 0.0)
    group = (Workload.state, Workload.kind, Workload.flavor)
    spent = (sa.select(key, *group, sa.func.count(), seconds)
             .where(whose, sa.or_(Workload.state.in_(ACTIVE_STATES), Workload.ended_at >= since))
             .group_by(*keys, *group))
    return waiting, spent


def _charged_to(project: str) -> str:
    """The pattern of workloads started for `project`. The list is JSON in both databases;
    a project name has no quote, so its quoted form matches it and no other."""
    if not catalogues.is_project_name(project):
        raise ValueError(f"{project!r} is not a project name")
    return f'%"{project}"%'


def hold_quotas(session: Session, owners: Iterable[str], projects: Iterable[str], *,
                sqlite_write_lock: bool = True) -> None:
    """Hold the quota accounts a start counts against until its transaction ends, so two
    starts at the same instant cannot both take the last slot. Called before the transaction
    reads anything. PostgreSQL: a transaction-scoped advisory lock per account, taken in one
    statement in the order of their names (so two holders never wait for each other). SQLite,
    where one writer runs at a time: the database's write lock, taken now (not when the start
    writes, after its reads); not where another process writes the row meanwhile."""
    if session.get_bind().dialect.name == "postgresql":
        keys = sorted({*(f"vre-quota:user:{o}" for o in owners),
                       *(f"vre-quota:project:{p}" for p in projects)})
        session.execute(sa.text(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM "
            "(SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k) AS held"),
            {"keys": keys})
    elif sqlite_write_lock:
        session.execute(sa.update(Workload).where(sa.false()).values(state=Workload.state))


def project_accounts(session: Session, projects: Iterable[str], now: datetime,
                     flavors: dict[str, Flavor] | None = None) -> list[Account]:
    """The quota of each project a workload is started for (its own, else the projects'
    default), with what the project's workloads use now and this month."""
    wanted = sorted(set(projects))
    if not wanted:
        return []
    quotas = catalogues.effective_quotas(session, "project", wanted)
    return [Account("project", project, catalogues.limits_of(quotas[project]),
                    _usages(session, "project", {"charged": _charged_to(project)}, now,
                            flavors).get(None, Usage()))
            for project in wanted]


def _gpus_held(flavor: Flavor) -> float:
    """The GPUs a workload of this flavor holds: a share of one, for a flavor that shares."""
    return flavor.gpus / max(flavor.gpu_share or 1, 1)


def user_account(session: Session, subject: str, now: datetime,
                 flavors: dict[str, Flavor] | None = None) -> Account:
    """The user's quota (their own, else the default) with what they use now and this month:
    the account every start, every flavor listing and the quota route count against."""
    return user_accounts(session, [subject], now, flavors)[subject]


def user_accounts(session: Session, subjects: Iterable[str], now: datetime,
                  flavors: dict[str, Flavor] | None = None) -> dict[str, Account]:
    """`user_account` of each of several users, in two statements whatever their number."""
    wanted = sorted(set(subjects))
    quotas = catalogues.effective_quotas(session, "user", wanted)
    usages = usages_of(session, wanted, now, flavors)
    return {s: Account("user", s, catalogues.limits_of(quotas[s]), usages[s]) for s in wanted}


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def decide_start(session: Session, principal: Principal, ask: DesktopRequest,
                 host: HostCapacity, now: datetime) -> Flavor:
    """The flavor to start with, or the refusal (flavor, allowed, quota, capacity)."""
    application = catalogues.application(session, ask.application)
    if application.kind != "desktop" or not application.enabled:
        raise ApiError(f"application {ask.application!r} is not a desktop that may start",
                       code="application_unavailable", status=422, field="application")
    if config_of().compute_backend == "local" and not application.local_command:
        raise ApiError(f"application {ask.application!r} names nothing to run on one "
                       "machine (its local_command)", code="application_not_local",
                       status=422, field="application")
    row = session.get(Flavor, ask.flavor)
    spec = catalogues.spec_of(row) if row is not None else None
    accounts = [user_account(session, principal.subject, now),
                *project_accounts(session, ask.projects, now)]
    decide("desktop", spec, Requester.of(principal.roles, ask.projects), accounts, host,
           flavor_name=ask.flavor).raise_if_refused()
    assert row is not None
    return row


def flavor_choices(session: Session, principal: Principal, host: HostCapacity,
                   now: datetime) -> list[tuple[Flavor, Decision]]:
    """The flavors a person may use, each with whether a desktop of it may start now (the
    same decision as `decide_start`); flavors disabled or reserved for others are left out."""
    account = user_account(session, principal.subject, now)
    who = Requester.of(principal.roles)
    choices = []
    for row in catalogues.flavors(session):
        decision = decide("desktop", catalogues.spec_of(row), who, [account], host)
        if decision.code not in ("flavor_disabled", "flavor_not_allowed"):
            choices.append((row, decision))
    return choices


def host_of(client: AgentClient) -> HostCapacity:
    """The largest workload the backend could ever run."""
    try:
        capacity = client.capacity()
    except ComputeError as exc:
        raise agent_error(exc) from None
    return HostCapacity(cpus=capacity["total_cpus"], memory_mib=capacity["total_memory_mib"],
                        gpus=capacity["total_gpus"])


def start(session: Session, principal: Principal, ask: DesktopRequest,
          datasets_service: DatasetClient, now: datetime) -> dict[str, Any]:
    """Start a desktop for the principal; nothing stays granted or running on a refusal."""
    if principal.is_service:
        raise Forbidden("desktops are started by people", code="not_a_person")
    client = agent()
    # The agent records the desktop from its own connection: SQLite's write lock would wait
    # for it, so only PostgreSQL holds the accounts here.
    hold_quotas(session, [principal.subject], ask.projects, sqlite_write_lock=False)
    flavor = decide_start(session, principal, ask, host_of(client), now)
    config = config_of()
    workload_id = "d" + uuid.uuid4().hex[:16]
    application = catalogues.application(session, ask.application)
    try:
        grant = datasets_service.create_grant({
            "user_id": principal.subject, "user_roles": sorted(principal.roles),
            "workload_id": workload_id, "purpose": "desktop", "datasets": list(ask.datasets),
            "tool": ask.application, "flavor": flavor.name, "image": application.image})
    except DatasetUnavailable:
        raise ServiceUnavailable("the dataset service does not answer; try again",
                                 code="datasets_unavailable") from None
    except DatasetError as exc:
        raise ApiError(exc.message, code=exc.code or "grant_refused", status=exc.status,
                       details=exc.details) from None
    mounts = tuple(DatasetMount(dataset_id=m["dataset_id"], name=m["name"],
                                version=str(m["version"]), content_hash=m["content_hash"],
                                tree=m["tree"], project=m.get("project", ""))
                   for m in grant["mounts"])
    # The backend's hard limit is the maximum lifetime: the agent enforces the expiry, which
    # starts at the flavor's run time and moves with each extension.
    cap = int(config.desktop_max_lifetime_hours * 3600)
    spec = WorkloadSpec(
        workload_id=workload_id, owner=principal.subject, kind="desktop",
        application=ask.application, command=tuple(application.local_command),
        resources=Resources(cpus=flavor.cpus, memory_mib=flavor.memory_mib, gpus=flavor.gpus,
                            max_runtime_seconds=cap + 60),
        mounts=mounts, image=application.image,
        token=workload_token(current_app.extensions["vre.issuer"], principal.subject,
                             workload_id, list(ask.datasets), config.token_ttl_seconds))
    try:
        return client.start(spec, flavor.name, list(ask.datasets), grant_id=grant["id"],
                            expires_in=flavor.max_runtime_minutes * 60,
                            projects=sorted(set(ask.projects)))
    except ComputeError as exc:
        end_grant(datasets_service, grant["id"])
        raise agent_error(exc) from None


def end_grant(datasets_service: DatasetClient, grant_id: str | None) -> None:
    if not grant_id:
        return
    try:
        datasets_service.end_grant(grant_id)
    except DatasetError as exc:
        if exc.status != 404:
            raise


def visible(session: Session, principal: Principal, workload_id: str) -> Workload:
    """A desktop its owner (or an administrator) may see; any other reads as not found."""
    row = session.get(Workload, workload_id)
    if principal.workload_id is not None and principal.workload_id != workload_id:
        row = None  # a desktop's token sees that desktop alone
    if row is None or row.kind != "desktop" or (
            row.owner_id != principal.subject and not principal.has_any("admin")):
        raise NotFound(f"no desktop {workload_id!r}", field="desktop_id")
    return row


def stop(session: Session, principal: Principal, workload_id: str,
         datasets_service: DatasetClient, reason: str | None = None) -> dict[str, Any]:
    """End a desktop and its grant; the stop reason says whether its owner or an
    administrator ended it."""
    visible(session, principal, workload_id)
    return stop_workload(session, principal, workload_id, datasets_service, reason)


def stop_workload(session: Session, principal: Principal, workload_id: str,
                  datasets_service: DatasetClient, reason: str | None = None) -> dict[str, Any]:
    """End any workload, desktop or job, and its grant, as the principal: its owner's stop or
    an administrator's (callers check who asks)."""
    row = session.get(Workload, workload_id)
    if row is None:
        raise NotFound(f"no workload {workload_id!r}", field="workload_id")
    grant_id = row.grant_id
    reason = reason or (lifecycle.STOPPED_BY_OWNER if row.owner_id == principal.subject
                        else lifecycle.STOPPED_BY_ADMIN)
    try:
        shown = agent().stop(workload_id, reason=reason, actor=principal.subject)
    except ComputeError as exc:
        raise agent_error(exc) from None
    end_grant(datasets_service, grant_id)
    return shown


def owned(session: Session, principal: Principal, workload_id: str, doing: str) -> Workload:
    """A desktop the principal owns; an administrator's look at another's is refused."""
    row = visible(session, principal, workload_id)
    if row.owner_id != principal.subject:
        raise Forbidden(f"only the desktop's owner may {doing} it", code="not_the_owner")
    return row


def restart(session: Session, principal: Principal, workload_id: str,
            datasets_service: DatasetClient, now: datetime) -> dict[str, Any]:
    """Stop the owner's desktop (when it still runs) and start a fresh one with the same
    application, flavor and datasets: a new grant and a new id. A start that is refused
    (a dataset invalidated since, a flavor disabled) leaves the old one stopped."""
    row = owned(session, principal, workload_id, "restart")
    ask = DesktopRequest(application=row.application, flavor=row.flavor,
                         datasets=tuple(row.datasets))
    if row.state in ACTIVE_STATES:
        stop(session, principal, workload_id, datasets_service, lifecycle.RESTARTED)
        session.expire_all()  # the agent changed it meanwhile; usage is counted afresh
    return start(session, principal, ask, datasets_service, now)


def forget(session: Session, principal: Principal, workload_id: str) -> None:
    """Take an ended desktop off its owner's list (its record stays, for usage and quotas)."""
    row = owned(session, principal, workload_id, "forget")
    if row.state in ACTIVE_STATES:
        raise ApiError("stop the desktop before taking it off your list",
                       code="desktop_running", status=409)
    row.forgotten_at = row.forgotten_at or utcnow()


def extend(session: Session, principal: Principal, workload_id: str) -> dict[str, Any]:
    """Move the owner's desktop's expiry a step later, up to its maximum lifetime."""
    owned(session, principal, workload_id, "extend")
    try:
        return agent().extend(workload_id)
    except ComputeError as exc:
        raise agent_error(exc) from None


def retire_ended(session: Session, datasets_service: DatasetClient,
                 workload_id: str) -> None:
    """End the grant of a desktop that ended by itself (the agent's after-exit work)."""
    row = session.get(Workload, workload_id)
    if row is not None and row.state not in ACTIVE_STATES:
        end_grant(datasets_service, row.grant_id)


def listing(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The principal's desktops, newest first (an administrator's: everyone's)."""
    from portal.compute.agent import row_out

    query = sa.select(Workload).where(Workload.kind == "desktop",
                                      Workload.forgotten_at.is_(None))
    if not principal.has_any("admin"):
        query = query.where(Workload.owner_id == principal.subject)
    since = datetime.now().astimezone() - timedelta(days=30)
    rows = session.scalars(query.order_by(Workload.created_at.desc()).limit(200))
    return [row_out(r) for r in rows if r.state in ACTIVE_STATES or r.created_at is None
            or _aware(r.created_at) >= since]
