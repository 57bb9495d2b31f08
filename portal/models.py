"""The portal's own tables: user accounts (local, or mirrored from the OIDC provider) and the
provider's tokens of each browser session, kept server-side."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vre.db import NAMING_CONVENTION, UtcDateTime, utcnow
from vre.outbox import outbox_table


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


# The traces of this service's actions until the tracer acknowledges them (vre.outbox).
trace_outbox = outbox_table(Base.metadata)


ROLES = ("researcher", "steward", "admin", "auditor")


class User(Base):
    """A person who signs in: a local account, or one mirrored from the OIDC provider."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(200), default="")
    email: Mapped[str | None] = mapped_column(sa.String(254))
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    roles: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    # Tokens issued before this moment are refused (a changed password, a disabled account).
    tokens_not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # "local", or the issuer URL of the OIDC provider the account is mirrored from.
    identity_provider: Mapped[str] = mapped_column(sa.String(255), default="local",
                                                   server_default="local")
    # The provider's "sub" of a mirrored account; None for a local one.
    external_subject: Mapped[str | None] = mapped_column(sa.String(255))
    # The provider's group paths ("/project-a"). Projects belong to the dataset service, which
    # maps these to project memberships; the portal only keeps what the provider said.
    groups: Mapped[list[str]] = mapped_column(sa.JSON, default=list,
                                              server_default=sa.text("'[]'"))

    __table_args__ = (sa.UniqueConstraint("identity_provider", "external_subject",
                                          name="uq_users_identity_provider"),)

    # Flask-Login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    @property
    def token_subject(self) -> str:
        """The `sub` of this person's tokens: the provider's for a mirrored account. The one
        id other services know the person by (memberships, access lists, grants, revocation,
        traces): the portal's own `id` differs from it for some mirrored accounts."""
        return self.external_subject or self.id

    def get_id(self) -> str:
        """What a browser session remembers of its user: the id and, for a local account, a
        tag of the password it signed in with, so a new password ends every other session
        (the session loader compares the tag with the current password's)."""
        if self.password_hash is None:
            return self.id
        tag = hmac.new(current_app.secret_key.encode(), self.password_hash.encode(),
                       hashlib.sha256).hexdigest()[:20]
        return f"{self.id}.{tag}"


class ProviderSession(Base):
    """The OIDC provider's tokens for one signed-in browser session, encrypted at rest.

    The browser's cookie holds only a random handle; `id` is its SHA-256, so neither a
    database reader nor the cookie alone yields a usable token."""

    __tablename__ = "provider_sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    tokens: Mapped[str] = mapped_column(sa.Text)
    access_expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    refresh_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow,
                                                 onupdate=utcnow)


class BrowserSession(Base):
    """A signed-in browser session, kept here so that signing out ends it: the cookie holds a
    random handle, `id` is its SHA-256, and a cookie whose row is gone signs in nobody."""

    __tablename__ = "browser_sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RevokedToken(Base):
    """An access token refused before it expires (by its `jti`); kept until it would have."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class RevokedWorkload(Base):
    """A stopped workload (desktop or job): tokens carrying its id (`wid`) are refused until
    `until`, when the last of them has expired."""

    __tablename__ = "revoked_workloads"

    workload_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    until: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


APPLICATION_KINDS = ("desktop", "batch")
QUOTA_SCOPES = ("user", "project")
# The subject of a quota row that applies to every user (or project) without a row of its own.
EVERYONE = "*"


class Application(Base):
    """Software a researcher may start: a desktop, or an image batch jobs run in."""

    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    kind: Mapped[str] = mapped_column(sa.String(16))
    image: Mapped[str] = mapped_column(sa.String(500))
    # "sha256:<hex>": pins the image, so a job's trace names exactly the code that ran.
    image_digest: Mapped[str | None] = mapped_column(sa.String(100))
    # Run when a request names no command; empty means the image's own entrypoint.
    command: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    # What the local backend runs instead of the image (one machine): a desktop's session by
    # name ("session:desktop"); empty: a job's own command, and no desktop at all.
    local_command: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow,
                                                 onupdate=utcnow)

    __table_args__ = (sa.CheckConstraint("kind IN ('desktop', 'batch')", name="kind"),)


class Flavor(Base):
    """A size of desktop or job (CPU, memory, GPUs, longest run) and who may use it.

    Never deleted, only disabled: traces of past jobs name their flavor."""

    __tablename__ = "flavors"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    cpus: Mapped[float] = mapped_column(sa.Float)
    memory_mib: Mapped[int] = mapped_column(sa.Integer)
    gpus: Mapped[int] = mapped_column(sa.Integer, default=0)
    gpu_model: Mapped[str | None] = mapped_column(sa.String(100))
    # How many jobs of this flavor may run on one GPU at once; 1: each has a GPU to itself.
    gpu_share: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")
    max_runtime_minutes: Mapped[int] = mapped_column(sa.Integer)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    # Empty lists mean everyone; a user needs one of the roles AND one of the projects.
    allowed_roles: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    allowed_projects: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow,
                                                 onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("cpus > 0 AND memory_mib > 0 AND gpus >= 0 "
                           "AND max_runtime_minutes > 0", name="sizes"),
    )


class Quota(Base):
    """Limits of one user or project (or of every one, subject "*"); None means no limit."""

    __tablename__ = "quotas"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    scope: Mapped[str] = mapped_column(sa.String(16))
    # A user id, a project name, or "*".
    subject: Mapped[str] = mapped_column(sa.String(128))
    max_desktops: Mapped[int | None] = mapped_column(sa.Integer)
    max_jobs: Mapped[int | None] = mapped_column(sa.Integer)
    max_gpus: Mapped[int | None] = mapped_column(sa.Integer)
    cpu_hours_per_month: Mapped[float | None] = mapped_column(sa.Float)
    gpu_hours_per_month: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow,
                                                 onupdate=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("scope", "subject", name="uq_quotas_scope_subject"),
        sa.CheckConstraint("scope IN ('user', 'project')", name="scope"),
    )


WORKLOAD_STATES = ("queued", "starting", "running", "stopping", "stopped", "failed",
                   "succeeded", "cancelled")
ACTIVE_STATES = ("starting", "running", "stopping")
# A job's states before it ends (waiting in the queue counts), and how a job can end.
JOB_OPEN_STATES = ("queued", *ACTIVE_STATES)
JOB_FINAL_STATES = ("succeeded", "failed", "cancelled")


class Workload(Base):
    """One desktop or job as the compute agent knows it: who runs what, with which data, where
    it stands, and the backend's state that lets a restarted agent re-attach to it."""

    __tablename__ = "workloads"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    application: Mapped[str] = mapped_column(sa.String(64))
    flavor: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16), index=True, default="starting")
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    datasets: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    # The projects it was started for (checked memberships): their quotas count it too.
    projects: Mapped[list[str]] = mapped_column(sa.JSON, default=list, server_default="[]")
    grant_id: Mapped[str | None] = mapped_column(sa.String(64))
    spec: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    backend_state: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    exit_status: Mapped[int | None] = mapped_column(sa.Integer)
    cpu_seconds: Mapped[float] = mapped_column(sa.Float, default=0.0)
    memory_peak_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A desktop's deadline: its flavor's run time after start, moved on by extensions up to
    # the configured maximum lifetime; the agent stops it then.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Written by the VNC proxy's reports (through the agent): a viewer connected, input.
    viewer_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    input_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set while the desktop is warned of being stopped for idleness, and when it will be.
    idle_warning_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    culls_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Why it stopped (portal.compute.lifecycle's codes, or "failed: ..."), and who asked.
    stop_reason: Mapped[str | None] = mapped_column(sa.Text)
    stopped_by: Mapped[str | None] = mapped_column(sa.String(128))
    # When its owner took an ended desktop off their list (the record stays, for quotas).
    forgotten_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A job's own facts: its name, the desktop it was submitted from, the jobs it waits for,
    # the caller's key for a repeated submission, its time limit, the GPUs it was given and
    # the hash over its output folder's manifest once it ended.
    name: Mapped[str] = mapped_column(sa.String(128), default="")
    parent_id: Mapped[str | None] = mapped_column(sa.String(64))
    depends_on: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128))
    time_limit_seconds: Mapped[int | None] = mapped_column(sa.Integer)
    gpu_ids: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    output_hash: Mapped[str | None] = mapped_column(sa.String(80))

    __table_args__ = (
        sa.CheckConstraint("kind IN ('desktop', 'job')", name="kind"),
        sa.CheckConstraint("state IN ('queued', 'starting', 'running', 'stopping', 'stopped', "
                           "'failed', 'succeeded', 'cancelled')", name="state"),
        sa.UniqueConstraint("owner_id", "idempotency_key",
                            name="uq_workloads_owner_id_idempotency_key"),
        sa.Index("ix_workloads_kind_state", "kind", "state"),
        # What the quotas count of the waiting jobs, read without their rows.
        sa.Index("ix_workloads_queued", "owner_id", "flavor", "time_limit_seconds",
                 postgresql_where=sa.text("state = 'queued'"),
                 sqlite_where=sa.text("state = 'queued'")),
    )


@dataclass(eq=False, slots=True)
class NewJob:
    """A job decided in a submission's transaction, before it is written: the values of its
    Workload row, read as a row is (`portal.jobs.job_out`, its JOB_SUBMITTED trace). Written
    with the others of its transaction in one INSERT: building an ORM object for each cost
    more than deciding the submission."""

    id: str
    owner_id: str
    application: str
    flavor: str
    datasets: list[str]
    projects: list[str]
    name: str
    parent_id: str | None
    depends_on: list[str]
    idempotency_key: str | None
    time_limit_seconds: int
    created_at: datetime
    spec: dict[str, Any] = field(default_factory=dict)
    grant_id: str | None = None
    # What a queued job's row holds until the agent starts it.
    kind: str = "job"
    state: str = "queued"
    reason: str = ""
    stop_reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_status: int | None = None
    cpu_seconds: float = 0.0
    memory_peak_bytes: int = 0
    gpu_ids: list[str] = field(default_factory=list)
    output_hash: str | None = None

    def values(self) -> dict[str, Any]:
        """The row to insert into workloads."""
        return {name: getattr(self, name) for name in _NEW_JOB_COLUMNS} | {"backend_state": {}}


_NEW_JOB_COLUMNS = tuple(f.name for f in fields(NewJob))

#: A job as its answer and traces read it: its row, or the row about to be written.
JobRecord = Workload | NewJob


EXPORT_STATES = ("draft", "submitted", "checking", "in_review", "changes_requested",
                 "approved", "rejected", "released", "withdrawn")


class ExportRequest(Base):
    """Results a researcher asks to take out: what they are, why, the files pinned by
    SHA-256 when it was submitted, the datasets they came from, and where review stands."""

    __tablename__ = "export_requests"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    purpose: Mapped[str] = mapped_column(sa.Text, default="")
    state: Mapped[str] = mapped_column(sa.String(24), index=True, default="draft")
    project: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    reviewers_needed: Mapped[int] = mapped_column(sa.Integer, default=2)
    datasets: Mapped[list[dict]] = mapped_column(sa.JSON, default=list)
    jobs: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    workload_id: Mapped[str | None] = mapped_column(sa.String(64))
    total_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        sa.CheckConstraint("state IN ('draft', 'submitted', 'checking', 'in_review', "
                           "'changes_requested', 'approved', 'rejected', 'released', "
                           "'withdrawn')", name="state"),
    )


class ExportFile(Base):
    """One file of a request: its path in ~/persistent, its pinned size and SHA-256, what the
    automatic checks found, and the decision once reviewed."""

    __tablename__ = "export_files"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("export_requests.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(sa.String(1024))
    size: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(sa.String(64), default="")
    verdict: Mapped[str] = mapped_column(sa.String(8), default="pass")
    findings: Mapped[list[dict]] = mapped_column(sa.JSON, default=list)
    decision: Mapped[str | None] = mapped_column(sa.String(24))
    job_id: Mapped[str | None] = mapped_column(sa.String(64))


class ExportVote(Base):
    """One reviewer's vote on one file, hidden from the other reviewers until theirs are in."""

    __tablename__ = "export_votes"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    request_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("export_requests.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("export_files.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[str] = mapped_column(sa.String(128))
    vote: Mapped[str] = mapped_column(sa.String(16))
    comment: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = (sa.UniqueConstraint("file_id", "reviewer_id",
                                          name="uq_export_votes_file_id_reviewer_id"),)


class Notification(Base):
    """A message for one person about something that changed (an export's state)."""

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    user_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    text: Mapped[str] = mapped_column(sa.String(500))
    link: Mapped[str] = mapped_column(sa.String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ExportPolicy(Base):
    """How a project's results leave: how many reviewers each request needs, the smallest
    count its tables may show, and how much it may export a month (None: the platform's
    setting, or no limit)."""

    __tablename__ = "export_policies"

    project: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    reviewers: Mapped[int | None] = mapped_column(sa.Integer)
    threshold: Mapped[int | None] = mapped_column(sa.Integer)
    files_per_month: Mapped[int | None] = mapped_column(sa.Integer)
    bytes_per_month: Mapped[int | None] = mapped_column(sa.BigInteger)
    updated_by: Mapped[str] = mapped_column(sa.String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
