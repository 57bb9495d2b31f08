"""The catalogue API: flavors and applications for everyone signed in (what `vre-job` and the
desktop launcher offer), each caller's own quota and what is left of it, and the
administration of catalogues and quotas for administrators."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from portal import catalogues, desktops
from portal.catalogues import (
    ApplicationIn,
    ApplicationOut,
    ApplicationPatch,
    FlavorIn,
    FlavorOut,
    FlavorPatch,
    QuotaIn,
    QuotaOut,
    QuotaPatch,
)
from portal.clients import member_projects
from portal.models import Flavor
from portal.quotas import Account, HostCapacity, Kind, Requester, decide, flavor_decision, left_of
from vre.api import current_principal, endpoint
from vre.db import utcnow
from vre.errors import Forbidden, NotFound
from vre.tokens import WORKLOAD_SCOPE, Principal
from vre.web import config_of, db_of

bp = Blueprint("portal_admin_api", __name__, url_prefix="/api/v1")

ADMIN = ["admin"]


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


def _is_admin(principal: Principal) -> bool:
    return principal.has_any("admin")


# -- flavors ------------------------------------------------------------------------------

class ProjectsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: list[str] = Field(default_factory=list, description=(
        "Projects the question is about (repeatable); the caller must be a member of each "
        "(from a desktop: by default the projects it was started for)"))

    @field_validator("project", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class FlavorQuery(ProjectsQuery):
    kind: Kind = Field("job", description=(
        "What the caller means to start: a person's flavors are marked with the whole "
        "decision for it, their quota included. Flavors reserved for a project are listed "
        "only when it is named."))


def _account(session: Session, principal: Principal) -> Account | None:
    """A person's quota account (a desktop's token counts against its owner); none for a
    service, which starts nothing of its own."""
    if principal.is_service:
        return None
    return desktops.user_account(session, principal.subject, utcnow())


def _flavor_view(row: Flavor, principal: Principal, who: Requester, host: HostCapacity,
                 kind: Kind, account: Account | None) -> FlavorOut | None:
    """A flavor as this caller sees it: hidden when not theirs, marked when not usable (for a
    person, by the same decision a start gets: flavor, allowed, quota, host)."""
    spec = catalogues.spec_of(row)
    decision = flavor_decision(spec, who, host) if account is None else \
        decide(kind, spec, who, [account], host)
    hidden = decision.code in ("flavor_disabled", "flavor_not_allowed")
    if hidden and not _is_admin(principal):
        return None
    return catalogues.flavor_out(row, decision.allowed, decision.code,
                                 None if decision.allowed else decision.reason)


@bp.get("/flavors")
@endpoint("Flavors the caller may use (administrators see all), each marked usable or not",
          query=FlavorQuery, response=list[FlavorOut], tags=["catalogue"],
          scopes=[WORKLOAD_SCOPE])
def list_flavors(query: FlavorQuery) -> list[FlavorOut]:
    principal = _principal()
    who = Requester.of(principal.roles, member_projects(principal, query.project))
    host = catalogues.host_capacity(config_of())
    with db_of().session() as session:
        account = _account(session, principal)
        views = (_flavor_view(row, principal, who, host, query.kind, account)
                 for row in catalogues.flavors(session))
        return [view for view in views if view is not None]


@bp.get("/flavors/<name>")
@endpoint("One flavor", query=FlavorQuery, response=FlavorOut, tags=["catalogue"],
          scopes=[WORKLOAD_SCOPE])
def get_flavor(name: str, query: FlavorQuery) -> FlavorOut:
    principal = _principal()
    who = Requester.of(principal.roles, member_projects(principal, query.project))
    with db_of().session() as session:
        view = _flavor_view(catalogues.flavor(session, name), principal, who,
                            catalogues.host_capacity(config_of()), query.kind,
                            _account(session, principal))
    if view is None:
        raise NotFound(f"there is no flavor {name!r}", field="name")
    return view


@bp.post("/flavors")
@endpoint("Add a flavor", body=FlavorIn, response=FlavorOut, status=201, roles=ADMIN,
          tags=["catalogue"])
def create_flavor(body: FlavorIn) -> FlavorOut:
    with db_of().session() as session:
        return catalogues.flavor_out(catalogues.create_flavor(session, body))


@bp.patch("/flavors/<name>")
@endpoint("Change or disable a flavor", body=FlavorPatch, response=FlavorOut, roles=ADMIN,
          tags=["catalogue"])
def update_flavor(name: str, body: FlavorPatch) -> FlavorOut:
    with db_of().session() as session:
        row = catalogues.update_flavor(session, name, body.model_dump(exclude_unset=True))
        return catalogues.flavor_out(row)


# -- applications -------------------------------------------------------------------------

class ApplicationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["desktop", "batch"] | None = None


@bp.get("/applications")
@endpoint("Applications that can be started (administrators also see disabled ones)",
          query=ApplicationQuery, response=list[ApplicationOut], tags=["catalogue"],
          scopes=[WORKLOAD_SCOPE])
def list_applications(query: ApplicationQuery) -> list[ApplicationOut]:
    admin = _is_admin(_principal())
    with db_of().session() as session:
        return [catalogues.application_out(row)
                for row in catalogues.applications(session, query.kind)
                if row.enabled or admin]


@bp.get("/applications/<app_id>")
@endpoint("One application", response=ApplicationOut, tags=["catalogue"],
          scopes=[WORKLOAD_SCOPE])
def get_application(app_id: str) -> ApplicationOut:
    admin = _is_admin(_principal())
    with db_of().session() as session:
        row = catalogues.application(session, app_id)
        if not row.enabled and not admin:
            raise NotFound(f"there is no application {app_id!r}", field="id")
        return catalogues.application_out(row)


@bp.post("/applications")
@endpoint("Add an application", body=ApplicationIn, response=ApplicationOut, status=201,
          roles=ADMIN, tags=["catalogue"])
def create_application(body: ApplicationIn) -> ApplicationOut:
    with db_of().session() as session:
        return catalogues.application_out(catalogues.create_application(session, body))


@bp.patch("/applications/<app_id>")
@endpoint("Change or disable an application", body=ApplicationPatch,
          response=ApplicationOut, roles=ADMIN, tags=["catalogue"])
def update_application(app_id: str, body: ApplicationPatch) -> ApplicationOut:
    with db_of().session() as session:
        row = catalogues.update_application(session, app_id,
                                            body.model_dump(exclude_unset=True))
        return catalogues.application_out(row)


# -- quotas -------------------------------------------------------------------------------

class QuotaLimits(BaseModel):
    max_desktops: int | None = Field(description="Running desktops.")
    max_jobs: int | None = Field(description="Queued and running jobs together.")
    max_gpus: int | None = Field(description="GPUs in use.")
    cpu_hours_per_month: float | None
    gpu_hours_per_month: float | None


class QuotaUsage(BaseModel):
    desktops: int = Field(description="Desktops running now.")
    jobs: int = Field(description="Jobs queued or running now.")
    gpus: int = Field(description="GPUs in use now.")
    cpu_hours: float = Field(description="CPU-hours used this month.")
    gpu_hours: float = Field(description="GPU-hours used this month.")


class ProjectQuotaStatus(BaseModel):
    project: str
    limits: QuotaLimits
    usage: QuotaUsage
    left: QuotaLimits


class QuotaStatus(BaseModel):
    """The caller's quota, what they use, and what is left (null: no limit)."""

    limits: QuotaLimits
    usage: QuotaUsage
    left: QuotaLimits
    projects: list[ProjectQuotaStatus] = Field(default_factory=list, description=(
        "The quota of each project asked about (from a desktop: those it was started for), "
        "which its work counts against as well"))


def _status(account: Account) -> dict[str, Any]:
    return {"limits": QuotaLimits(**asdict(account.limits)),
            "usage": QuotaUsage(**asdict(account.usage)),
            "left": QuotaLimits(**asdict(left_of(account.limits, account.usage)))}


@bp.get("/quota")
@endpoint("The caller's own quota, usage and what is left of it (a desktop's token: its "
          "owner's), and those of the projects named", query=ProjectsQuery,
          response=QuotaStatus, tags=["quotas"], scopes=[WORKLOAD_SCOPE])
def my_quota(query: ProjectsQuery) -> QuotaStatus:
    principal = _principal()
    projects = member_projects(principal, query.project)
    now = utcnow()
    with db_of().session() as session:
        account = desktops.user_account(session, principal.subject, now)
        shared = desktops.project_accounts(session, projects, now)
    return QuotaStatus(**_status(account), projects=[
        ProjectQuotaStatus(project=a.subject, **_status(a)) for a in shared])


class QuotaQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["user", "project"] | None = None
    subject: str | None = Field(None, max_length=128)


@bp.get("/quotas")
@endpoint("Quotas: all of them for administrators, the one that applies to the caller for "
          "others", query=QuotaQuery, response=list[QuotaOut], tags=["quotas"])
def list_quotas(query: QuotaQuery) -> list[QuotaOut]:
    principal = _principal()
    with db_of().session() as session:
        if _is_admin(principal):
            return [catalogues.quota_out(q)
                    for q in catalogues.quotas(session, query.scope, query.subject)]
        if query.scope == "project" or query.subject not in (None, principal.subject):
            raise Forbidden("only administrators may read other quotas")
        mine = catalogues.effective_quota(session, "user", principal.subject)
        return [catalogues.quota_out(mine)] if mine is not None else []


@bp.post("/quotas")
@endpoint("Set the quota of a user or a project (subject \"*\": everyone without one)",
          body=QuotaIn, response=QuotaOut, status=201, roles=ADMIN, tags=["quotas"])
def create_quota(body: QuotaIn) -> QuotaOut:
    with db_of().session() as session:
        return catalogues.quota_out(catalogues.create_quota(session, body))


@bp.get("/quotas/<quota_id>")
@endpoint("One quota", response=QuotaOut, roles=ADMIN, tags=["quotas"])
def get_quota(quota_id: str) -> QuotaOut:
    with db_of().session() as session:
        return catalogues.quota_out(catalogues.quota(session, quota_id))


@bp.patch("/quotas/<quota_id>")
@endpoint("Change a quota's limits (null: no limit)", body=QuotaPatch, response=QuotaOut,
          roles=ADMIN, tags=["quotas"])
def update_quota(quota_id: str, body: QuotaPatch) -> QuotaOut:
    with db_of().session() as session:
        row = catalogues.update_quota(session, quota_id, body.model_dump(exclude_unset=True))
        return catalogues.quota_out(row)


@bp.delete("/quotas/<quota_id>")
@endpoint("Remove a quota: its subject falls back to the default of its scope",
          response=QuotaOut, roles=ADMIN, tags=["quotas"])
def delete_quota(quota_id: str) -> QuotaOut:
    with db_of().session() as session:
        row = catalogues.quota(session, quota_id)
        out = catalogues.quota_out(row)
        session.delete(row)
        return out

