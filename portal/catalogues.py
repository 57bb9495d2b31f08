"""The application and flavor catalogues and the quotas, kept as data: the schemas that check
them, the reads and writes the admin API and the admin pages share, the defaults of a first
start, and the capacity of this host that flavors are measured against."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from portal.models import EVERYONE, Application, Base, Flavor, Quota, User
from portal.quotas import FlavorSpec, HostCapacity, Limits
from vre.api import validated as checked
from vre.config import Config
from vre.errors import ApiError, Conflict, NotFound

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
PROJECT = r"^[a-z0-9][a-z0-9-]{1,62}$"  # the dataset service's project names
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,499}$"
DIGEST = r"^sha256:[0-9a-f]{64}$"
Role = Literal["researcher", "steward", "admin", "auditor"]  # portal.models.ROLES


# -- schemas ------------------------------------------------------------------------------

class FlavorIn(BaseModel):
    """A flavor as an administrator defines it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SLUG, description="Short unique name, e.g. small-gpu.")
    description: str = Field("", max_length=2000)
    cpus: float = Field(gt=0, le=1024)
    memory_mib: int = Field(gt=0, le=16 * 1024 * 1024)
    gpus: int = Field(0, ge=0, le=64)
    gpu_model: str | None = Field(None, min_length=1, max_length=100)
    gpu_share: int = Field(1, ge=1, le=64, description=(
        "How many jobs of it may run on one GPU at once (for small jobs: inference, "
        "debugging); 1: each job has its GPU to itself. Only a one-GPU flavor shares."))
    max_runtime_minutes: int = Field(gt=0, le=60 * 24 * 31)
    enabled: bool = True
    allowed_roles: list[Role] = Field(
        default_factory=list, description="Roles that may use it; empty: every role.")
    allowed_projects: list[str] = Field(
        default_factory=list, description="Projects that may use it; empty: every project.")

    @model_validator(mode="after")
    def _consistent(self) -> FlavorIn:
        for project in self.allowed_projects:
            if not re.fullmatch(PROJECT, project):
                raise ValueError(f"allowed_projects: {project!r} is not a project name")
        if self.gpu_model and not self.gpus:
            raise ValueError("gpu_model is given but gpus is 0")
        if self.gpu_share > 1 and self.gpus != 1:
            raise ValueError("gpu_share: only a flavor of one GPU shares it")
        self.allowed_roles = sorted(set(self.allowed_roles))
        self.allowed_projects = sorted(set(self.allowed_projects))
        return self


class FlavorPatch(BaseModel):
    """Changes to a flavor; only the fields sent change (enabled=false disables it)."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    cpus: float | None = None
    memory_mib: int | None = None
    gpus: int | None = None
    gpu_model: str | None = None
    gpu_share: int | None = None
    max_runtime_minutes: int | None = None
    enabled: bool | None = None
    allowed_roles: list[str] | None = None
    allowed_projects: list[str] | None = None


class FlavorOut(FlavorIn):
    created_at: datetime
    updated_at: datetime
    usable: bool = Field(True, description=(
        "Whether the caller may start one now: the flavor's policy, their quota, this host."))
    refusal: str | None = Field(None, description="Why not: a stable refusal code.")
    reason: str | None = Field(None, description="Why not, in words.")


class ApplicationIn(BaseModel):
    """An application as an administrator defines it."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=SLUG, description="Short unique name, e.g. pytorch.")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    kind: Literal["desktop", "batch"]
    image: str = Field(pattern=IMAGE, description="Image reference, e.g. vre/desktop:0.1.0.")
    image_digest: str | None = Field(None, pattern=DIGEST,
                                     description="sha256:<hex> that pins the image.")
    command: list[str] = Field(default_factory=list, max_length=64,
                               description="Run when a request names none; empty: the "
                               "image's entrypoint.")
    local_command: list[str] = Field(
        default_factory=list, max_length=64,
        description="What runs on one machine, where there are no images: a platform "
        "session by name (session:desktop) or a command; empty: a job's own command, and no "
        "desktop.")
    enabled: bool = True

    @model_validator(mode="after")
    def _command(self) -> ApplicationIn:
        for name in ("command", "local_command"):
            if any(not part or len(part) > 1000 for part in getattr(self, name)):
                raise ValueError(f"{name}: each argument has 1 to 1000 characters")
        if self.local_command and self.local_command[0].startswith("session:") and \
                not re.fullmatch(r"session:[a-z][a-z0-9-]{0,31}", self.local_command[0]):
            raise ValueError("local_command: a session is named session:<lowercase name>")
        return self


class ApplicationPatch(BaseModel):
    """Changes to an application; only the fields sent change (enabled=false disables it)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str | None = None
    kind: str | None = None
    image: str | None = None
    image_digest: str | None = None
    command: list[str] | None = None
    local_command: list[str] | None = None
    enabled: bool | None = None


class ApplicationOut(ApplicationIn):
    created_at: datetime
    updated_at: datetime


_LIMITS = ("max_desktops", "max_jobs", "max_gpus", "cpu_hours_per_month",
           "gpu_hours_per_month")


class QuotaIn(BaseModel):
    """Limits of a user (by id) or a project (by name), or "*" for every one without its own."""

    model_config = ConfigDict(extra="forbid")
    scope: Literal["user", "project"]
    subject: str = Field(min_length=1, max_length=128)
    max_desktops: int | None = Field(None, ge=0, le=1000)
    max_jobs: int | None = Field(None, ge=0, le=100_000)
    max_gpus: int | None = Field(None, ge=0, le=1024)
    cpu_hours_per_month: float | None = Field(None, ge=0, le=10_000_000)
    gpu_hours_per_month: float | None = Field(None, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _subject(self) -> QuotaIn:
        if self.scope == "project" and self.subject != EVERYONE \
                and not re.fullmatch(PROJECT, self.subject):
            raise ValueError(f"subject: {self.subject!r} is not a project name")
        return self


class QuotaPatch(BaseModel):
    """New limits of a quota; a field sent as null removes that limit."""

    model_config = ConfigDict(extra="forbid")
    max_desktops: int | None = None
    max_jobs: int | None = None
    max_gpus: int | None = None
    cpu_hours_per_month: float | None = None
    gpu_hours_per_month: float | None = None


class QuotaOut(QuotaIn):
    id: str
    created_at: datetime
    updated_at: datetime


# -- reads and writes ---------------------------------------------------------------------

Row = TypeVar("Row", bound=Base)
Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: Mapping[str, Any], where: str = "body") -> Model:
    """The data checked by the schema and as storable (the JSON API's one check, whether it
    came as JSON or as a form), or the platform's 422 naming the first wrong field."""
    return checked(model, data, where)


def _fields(row: Base, model: type[BaseModel]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in model.model_fields if hasattr(row, name)}


def _patched(row: Base, model: type[Model], changes: Mapping[str, Any]) -> Model:
    # The whole record is checked again, so a change cannot break what the schema ensures.
    return validated(model, {**_fields(row, model), **changes})


def _write(row: Base, values: BaseModel) -> None:
    for name, value in values.model_dump().items():
        setattr(row, name, value)


def _one(session: Session, cls: type[Row], key: str, what: str, field: str) -> Row:
    row = session.get(cls, key)
    if row is None:
        raise NotFound(f"there is no {what} {key!r}", field=field)
    return row


def flavors(session: Session) -> list[Flavor]:
    """Every flavor, smallest first."""
    return list(session.scalars(sa.select(Flavor).order_by(
        Flavor.gpus, Flavor.cpus, Flavor.memory_mib, Flavor.name)))


def flavor(session: Session, name: str) -> Flavor:
    """One flavor by name, or 404."""
    return _one(session, Flavor, name, "flavor", "name")


def create_flavor(session: Session, values: FlavorIn) -> Flavor:
    """Add a flavor; its name must be new (flavors are never deleted, only disabled)."""
    if session.get(Flavor, values.name) is not None:
        raise Conflict(f"a flavor named {values.name!r} exists", code="flavor_exists",
                       field="name")
    row = Flavor()
    _write(row, values)
    session.add(row)
    session.flush()
    return row


def update_flavor(session: Session, name: str, changes: Mapping[str, Any]) -> Flavor:
    """Change a flavor; running workloads keep what they started with."""
    row = flavor(session, name)
    _write(row, _patched(row, FlavorIn, {**changes, "name": name}))
    session.flush()
    return row


def flavor_out(row: Flavor, usable: bool = True, refusal: str | None = None,
               reason: str | None = None) -> FlavorOut:
    """A flavor as the API answers it, marked with whether the caller may start it."""
    return FlavorOut(**_fields(row, FlavorIn), created_at=row.created_at,
                     updated_at=row.updated_at, usable=usable, refusal=refusal, reason=reason)


def is_project_name(name: str) -> bool:
    """Whether `name` is shaped like a project's name (the dataset service's rule)."""
    return re.fullmatch(PROJECT, name) is not None


def spec_of(row: Flavor) -> FlavorSpec:
    """The flavor as the quota decision sees it."""
    return FlavorSpec(name=row.name, cpus=row.cpus, memory_mib=row.memory_mib, gpus=row.gpus,
                      max_runtime_minutes=row.max_runtime_minutes, enabled=row.enabled,
                      allowed_roles=frozenset(row.allowed_roles or ()),
                      allowed_projects=frozenset(row.allowed_projects or ()))


def applications(session: Session, kind: str | None = None) -> list[Application]:
    """Every application (of one kind when given), desktops first, then by name."""
    query = sa.select(Application).order_by(Application.kind.desc(), Application.name)
    if kind:
        query = query.where(Application.kind == kind)
    return list(session.scalars(query))


def application(session: Session, app_id: str) -> Application:
    """One application by id, or 404."""
    return _one(session, Application, app_id, "application", "id")


def create_application(session: Session, values: ApplicationIn) -> Application:
    """Add an application; its id must be new."""
    if session.get(Application, values.id) is not None:
        raise Conflict(f"an application with id {values.id!r} exists",
                       code="application_exists", field="id")
    row = Application()
    _write(row, values)
    session.add(row)
    session.flush()
    return row


def update_application(session: Session, app_id: str,
                       changes: Mapping[str, Any]) -> Application:
    """Change an application; workloads already started keep their image."""
    row = application(session, app_id)
    _write(row, _patched(row, ApplicationIn, {**changes, "id": app_id}))
    session.flush()
    return row


def application_out(row: Application) -> ApplicationOut:
    """An application as the API answers it."""
    return ApplicationOut(**_fields(row, ApplicationIn), created_at=row.created_at,
                          updated_at=row.updated_at)


def quotas(session: Session, scope: str | None = None,
           subject: str | None = None) -> list[Quota]:
    """Quotas, defaults ("*") first within each scope."""
    query = sa.select(Quota).order_by(Quota.scope.desc(), Quota.subject != EVERYONE,
                                      Quota.subject)
    if scope:
        query = query.where(Quota.scope == scope)
    if subject:
        query = query.where(Quota.subject == subject)
    return list(session.scalars(query))


def quota(session: Session, quota_id: str) -> Quota:
    """One quota by id, or 404."""
    return _one(session, Quota, quota_id, "quota", "quota_id")


def create_quota(session: Session, values: QuotaIn) -> Quota:
    """Set the quota of a user or project that has none yet."""
    # A user's quota is kept under their token subject, the id a workload's owner has.
    if values.scope == "user" and values.subject != EVERYONE and session.scalar(
            sa.select(User.id).where(sa.or_(
                sa.and_(User.external_subject.is_(None), User.id == values.subject),
                User.external_subject == values.subject))) is None:
        raise ApiError(f"there is no user with id {values.subject!r}", code="unknown_user",
                       field="subject", status=422)
    if quotas(session, values.scope, values.subject):
        raise Conflict(f"the {values.scope} {values.subject!r} has a quota; change that one",
                       code="quota_exists", field="subject")
    row = Quota()
    _write(row, values)
    session.add(row)
    session.flush()
    return row


def update_quota(session: Session, quota_id: str, changes: Mapping[str, Any]) -> Quota:
    """Change a quota's limits; its scope and subject stay."""
    row = quota(session, quota_id)
    _write(row, _patched(row, QuotaIn, {**changes, "scope": row.scope,
                                        "subject": row.subject}))
    session.flush()
    return row


def quota_out(row: Quota) -> QuotaOut:
    """A quota as the API answers it."""
    return QuotaOut(**_fields(row, QuotaIn), id=row.id, created_at=row.created_at,
                    updated_at=row.updated_at)


def effective_quota(session: Session, scope: str, subject: str) -> Quota | None:
    """The subject's own quota, else the default of its scope, else None (no limits)."""
    return effective_quotas(session, scope, [subject])[subject]


def effective_quotas(session: Session, scope: str,
                     subjects: Iterable[str]) -> dict[str, Quota | None]:
    """`effective_quota` of each subject, read in one statement."""
    wanted = set(subjects)
    if not wanted:
        return {}
    rows = {q.subject: q for q in session.scalars(_QUOTAS_OF, {
        "scope": scope, "subjects": [*sorted(wanted), EVERYONE]})}
    return {s: rows.get(s) or rows.get(EVERYONE) for s in wanted}


# Built once: every submission's group and every start reads the quotas.
_QUOTAS_OF = sa.select(Quota).where(Quota.scope == sa.bindparam("scope"),
                                    Quota.subject.in_(sa.bindparam("subjects", expanding=True)))


def limits_of(row: Quota | None) -> Limits:
    """A quota row as the decision sees it; no row means no limits."""
    if row is None:
        return Limits()
    return Limits(**{name: getattr(row, name) for name in _LIMITS})


# -- the host -----------------------------------------------------------------------------

def _machine_memory_mib() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def _machine_gpus() -> int:
    return sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))


def host_capacity(config: Config) -> HostCapacity:
    """The most one workload can get: the configured values, else this machine's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    cpus = config.host_cpus or float(cores)
    memory = config.host_memory_mib or _machine_memory_mib()
    gpus = config.host_gpus if config.host_gpus is not None else \
        len(config.gpu_devices) if config.gpu_devices is not None else _machine_gpus()
    return HostCapacity(cpus=cpus, memory_mib=memory, gpus=gpus)


# -- first start --------------------------------------------------------------------------

DEFAULT_FLAVORS = (
    FlavorIn(name="no-gpu", description="2 CPUs and 4 GiB, no GPU, for up to 4 hours: "
             "scripts, data conversion and statistics that need no graphics card.",
             cpus=2, memory_mib=4096, max_runtime_minutes=4 * 60),
    FlavorIn(name="shared-gpu", description="2 CPUs, 8 GiB and a share of one GPU (four "
             "jobs run on it at once) for up to 4 hours: inference, debugging and small "
             "experiments that leave most of a graphics card idle.",
             cpus=2, memory_mib=8192, gpus=1, gpu_share=4, max_runtime_minutes=4 * 60),
    FlavorIn(name="small-gpu", description="4 CPUs, 16 GiB and one GPU for up to 8 hours: "
             "trying out a model, fine-tuning, or inference on a few thousand images.",
             cpus=4, memory_mib=16384, gpus=1, max_runtime_minutes=8 * 60),
    FlavorIn(name="medium-gpu", description="8 CPUs, 32 GiB and one GPU for up to 24 hours: "
             "training a model on a whole dataset.",
             cpus=8, memory_mib=32768, gpus=1, max_runtime_minutes=24 * 60),
    FlavorIn(name="large-gpu", description="16 CPUs, 64 GiB and two GPUs for up to 24 hours: "
             "large models, or training that spreads over more than one GPU.",
             cpus=16, memory_mib=65536, gpus=2, max_runtime_minutes=24 * 60),
    FlavorIn(name="desktop", description="2 CPUs and 4 GiB for up to 8 hours: a desktop to "
             "look at data, write code and submit jobs, which do the heavy work.",
             cpus=2, memory_mib=4096, max_runtime_minutes=8 * 60),
)
DEFAULT_APPLICATIONS = (
    ApplicationIn(id="desktop", name="Research desktop", kind="desktop",
                  image="vre/desktop:0.1.0", local_command=["session:desktop"],
                  description="A Linux desktop in the browser with the granted datasets "
                  "mounted read-only, a terminal, and vre-job to submit batch jobs."),
    ApplicationIn(id="pytorch", name="Python (PyTorch)", kind="batch",
                  image="vre/batch-python:0.1.0",
                  description="Python with PyTorch and the platform's dataset readers, "
                  "for training and evaluating models."),
    ApplicationIn(id="spark", name="Spark", kind="batch", image="vre/batch-spark:0.1.0",
                  description="Apache Spark in local mode with the platform's dataset "
                  "readers, for processing many studies at once."),
)
# max_jobs counts queued and running jobs together (as Slurm's MaxSubmitJobs does), so it is
# generous enough for a batch of queued work; the GPUs in use and GPU-hours are what is scarce.
DEFAULT_USER_QUOTA = QuotaIn(scope="user", subject=EVERYONE, max_desktops=2, max_jobs=50,
                             max_gpus=2, gpu_hours_per_month=200)


def seed_defaults(session: Session) -> bool:
    """Put the default flavors, applications and per-user quota into empty catalogues.

    Runs on every start and does nothing once any flavor or application exists, so what an
    administrator changed or disabled stays as they left it."""
    if session.scalar(sa.select(Flavor.name).limit(1)) is not None or \
            session.scalar(sa.select(Application.id).limit(1)) is not None:
        return False
    for flavor_values in DEFAULT_FLAVORS:
        create_flavor(session, flavor_values)
    for app_values in DEFAULT_APPLICATIONS:
        create_application(session, app_values)
    if not quotas(session, "user", EVERYONE):
        create_quota(session, DEFAULT_USER_QUOTA)
    return True
