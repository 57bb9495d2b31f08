"""The jobs API: submit a batch job (from a desktop with its token, or as a person), follow it
in the queue, read its logs as they grow, list its outputs, cancel it, and see past jobs.
Every refusal has its own code; nothing is queued, granted or traced on a refusal."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, ConfigDict, Field, field_validator

from portal import catalogues, jobs
from portal.clients import datasets_as_portal, member_projects
from vre.api import current_principal, endpoint
from vre.db import utcnow
from vre.errors import ApiError
from vre.outbox import outbox_of
from vre.tokens import JOBS_SCOPE, WORKLOAD_SCOPE, Principal
from vre.web import config_of, db_of

bp = Blueprint("portal_jobs_api", __name__, url_prefix="/api/v1")

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
SCOPES = [WORKLOAD_SCOPE, JOBS_SCOPE]
JobState = Literal["queued", "starting", "running", "stopping", "succeeded", "failed",
                   "cancelled"]


class JobIn(BaseModel):
    """What to run, where and with what; everything but the command has a default."""

    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, max_length=256, description=(
        "The program and its arguments, run as is (no shell; use [\"bash\", \"-c\", ...] "
        "for one)"))
    flavor: str = Field(jobs.DEFAULT_FLAVOR, pattern=_ID)
    application: str | None = Field(None, pattern=_ID, description=(
        "The batch application (its image) the job runs in; default pytorch"))
    image: str | None = Field(None, max_length=300, description=(
        "Instead of an application: the image of one, optionally @digest"))
    name: str = Field("", max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
    environment: dict[str, str] = Field(default_factory=dict, max_length=64)
    time_limit_minutes: float | None = Field(None, ge=0.1, le=60 * 24 * 31, description=(
        "Stopped after this long; default and most: the flavor's maximum run time"))
    after: list[str] = Field(default_factory=list, max_length=64, description=(
        "Jobs of yours that must succeed first; if one does not, this one is cancelled"))
    idempotency_key: str | None = Field(None, min_length=1, max_length=128,
                                        pattern=r"^[\x21-\x7e]+$", description=(
        "A repeated submission with the same key answers the first job instead of a new one"))
    datasets: list[str] | None = Field(None, max_length=50, description=(
        "Datasets to work on: from a desktop, by default all of its own (or some of them); "
        "as a person, the ones named"))
    project: list[str] = Field(default_factory=list, max_length=20)
    dry_run: bool = Field(False, description="Check everything and answer what would be "
                          "queued, without queuing it (no grant is made)")

    @field_validator("command")
    @classmethod
    def _arguments(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the command's program is empty")
        if sum(len(a) for a in value) > 64 * 1024:
            raise ValueError("the command is longer than 64 KiB")
        return value

    @field_validator("environment")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for name, text in value.items():
            if not re.match(_ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if len(text) > 4096:
                raise ValueError(f"the value of {name} is longer than 4096 characters")
        return value

    @field_validator("after", "datasets")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        import re

        for item in value or ():
            if not re.match(_ID, item):
                raise ValueError(f"{item!r} is not an id")
        return value


class PlaceOut(BaseModel):
    position: int = Field(description="1 is next")
    reason: str = Field(description="Dependency, Resources or Priority")
    detail: str
    estimated_start: str | None = Field(description="at the latest, if running jobs use "
                                        "their whole time limit; null when unknowable")


class DatasetOut(BaseModel):
    id: str
    name: str
    version: str
    content_hash: str


class JobOut(BaseModel):
    """A job and where it stands."""

    id: str
    name: str
    owner_id: str
    state: JobState
    reason: str = Field(description="how it ended: '', exit status N, time_limit, "
                        "out_of_memory, cancelled, dependency_failed, ...")
    stop_reason: str | None
    application: str
    image: str
    image_digest: str | None
    flavor: str
    command: list[str]
    environment: dict[str, str]
    time_limit_minutes: float
    after: list[str]
    desktop_id: str | None
    datasets: list[DatasetOut]
    submitted_at: str | None
    started_at: str | None
    ended_at: str | None
    exit_status: int | None
    wall_seconds: float | None
    cpu_seconds: float
    memory_peak_bytes: int
    gpus: list[str]
    gpu_hours: float
    queue: PlaceOut | None = Field(description="its place while it waits")
    outputs: str = Field(description="its output folder inside a desktop ($VRE_JOB_OUTPUT)")
    output_hash: str | None = Field(description="hash over the output folder's manifest, as "
                                    "JOB_FINISHED recorded it")


class DryRunOut(BaseModel):
    dry_run: bool
    job: JobOut


class JobsOut(BaseModel):
    jobs: list[JobOut]


class JobsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["active", "ended", "all"] = "active"
    limit: int = Field(200, ge=1, le=10_000)


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offset: int = Field(0, ge=0, le=2**53)


class FileOut(BaseModel):
    path: str
    kind: str = Field(description="file, or link/fifo/socket/device (named, never read)")
    size: int
    sha256: str | None


class OutputsOut(BaseModel):
    job_id: str
    folder: str
    files: list[FileOut]
    manifest_hash: str | None
    recorded_hash: str | None = Field(description="what JOB_FINISHED recorded; differs from "
                                      "manifest_hash when the files changed since")
    truncated: bool


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


def _group_commit() -> jobs.GroupCommit:
    """This process's group commit of submissions to this portal (created on first use)."""
    found = current_app.extensions.get("portal.submissions")
    if found is None:  # requests of one app lead each other's groups: current_app is theirs
        found = current_app.extensions.setdefault("portal.submissions",
                                                  jobs.GroupCommit(_record))
    return found


def _record(items: list[jobs.Submission]) -> list[jobs.Outcome]:
    """Record a group of submissions; the agent is told once that jobs wait, if any does."""
    with db_of().session() as session:
        outcomes = jobs.submit_all(session, items, datasets_as_portal(),
                                   catalogues.host_capacity(config_of()), utcnow(), outbox_of())
    if any(isinstance(o, tuple) and o[1] and not i.dry_run
           for i, o in zip(items, outcomes, strict=True)):
        jobs.poke_agent()
    return outcomes


@bp.post("/jobs")
@endpoint("Submit a batch job; it waits in the queue until its turn", body=JobIn,
          response=JobOut, status=201, tags=["jobs"], scopes=SCOPES)
def submit_job(body: JobIn) -> Any:
    ask = jobs.JobRequest(
        command=tuple(body.command), flavor=body.flavor, application=body.application,
        image=body.image, name=body.name, environment=dict(body.environment),
        time_limit_minutes=body.time_limit_minutes, after=tuple(body.after),
        idempotency_key=body.idempotency_key,
        datasets=None if body.datasets is None else tuple(body.datasets),
        projects=tuple(member_projects(_principal(), body.project)))
    outcome = _group_commit().submit(jobs.Submission(_principal(), ask, body.dry_run))
    if isinstance(outcome, ApiError):
        raise outcome
    job, new = outcome
    if body.dry_run:
        return {"dry_run": True, "job": job}, 200
    return job, 201 if new else 200


@bp.get("/jobs")
@endpoint("Your jobs: waiting and running (in queue order), ended (newest first), or all",
          query=JobsQuery, response=JobsOut, tags=["jobs"], scopes=SCOPES)
def list_jobs(query: JobsQuery) -> dict[str, Any]:
    principal = _principal()
    places = jobs.queue_places(principal.subject) if query.state != "ended" else {}
    with db_of().reading() as session:
        return {"jobs": jobs.listing(session, principal, query.state, query.limit, places)}


@bp.get("/jobs/<job_id>")
@endpoint("One job, with its place in the queue while it waits", response=JobOut,
          tags=["jobs"], scopes=SCOPES)
def show_job(job_id: str) -> dict[str, Any]:
    principal = _principal()
    with db_of().reading() as session:
        row = jobs.visible(session, principal, job_id)
        places = jobs.queue_places(row.owner_id) if row.state == "queued" else {}
        return jobs.job_out(row, places.get(row.id))


@bp.get("/jobs/<job_id>/logs")
@endpoint("The job's output from a byte offset on (X-Next-Offset says where to go on; "
          "X-Job-State whether more can come)", query=LogQuery, tags=["jobs"], scopes=SCOPES)
def job_logs(job_id: str, query: LogQuery) -> Response:
    with db_of().reading() as session:
        data, after, state = jobs.logs(_principal(), session, job_id, query.offset)
    return Response(data, mimetype="text/plain", headers={
        "X-Next-Offset": str(after), "X-Job-State": state,
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


@bp.post("/jobs/<job_id>/cancel")
@endpoint("Cancel a job, waiting or running (refused with job_ended once it ended)",
          response=JobOut, tags=["jobs"], scopes=SCOPES)
def cancel_job(job_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        cancelled = jobs.cancel(session, _principal(), job_id, datasets_as_portal(),
                                outbox_of())
    jobs.poke_agent()  # the queue moved on: plan again now
    return cancelled


@bp.get("/jobs/<job_id>/outputs")
@endpoint("The files in the job's output folder with their sizes and SHA-256, and the hash "
          "over them", response=OutputsOut, tags=["jobs"], scopes=SCOPES)
def job_outputs(job_id: str) -> dict[str, Any]:
    with db_of().reading() as session:
        return jobs.outputs(_principal(), session, job_id)
