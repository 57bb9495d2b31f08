"""The exports API: a researcher asks for files of ~/persistent to leave, the automatic checks
and the project's stewards review them file by file, and the requester alone downloads the
approved ones over short-lived links. Nothing else serves a file from a workload's folders."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from flask import Blueprint, Response, current_app, send_file
from pydantic import BaseModel, ConfigDict, Field

from portal.clients import datasets_as_portal
from portal.exports import requests
from vre.api import current_principal, endpoint
from vre.outbox import outbox_of
from vre.tokens import WORKLOAD_SCOPE, Principal
from vre.web import config_of, db_of

bp = Blueprint("portal_exports_api", __name__, url_prefix="/api/v1")
_TEXT = r"^[^\x00]*$"


class ExportIn(BaseModel):
    """Which files of ~/persistent, what they are and why they must leave."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    purpose: str = Field(min_length=1, max_length=4000, pattern=_TEXT, description=(
        "What the files are and why they must leave"))
    files: list[str] = Field(min_length=1, max_length=1000, description=(
        "Paths inside ~/persistent, e.g. jobs/<job id>/model.pt"))
    submit: bool = Field(True, description="Submit at once (false keeps a draft)")


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str = Field(pattern=r"^f[0-9a-f]{16}$")
    vote: Literal["approve", "changes", "reject"]
    comment: str = Field("", max_length=4000, pattern=_TEXT)


class FindingOut(BaseModel):
    code: str
    severity: str
    reason: str
    where: str


class VoteOut(BaseModel):
    reviewer_id: str
    vote: str
    comment: str
    at: str


class FileOut(BaseModel):
    id: str
    path: str
    size: int
    sha256: str = Field(description="the pinned content: exactly what may leave")
    verdict: Literal["pass", "flag", "refuse"] = Field(description=(
        "the automatic checks: refuse means it can never leave"))
    findings: list[FindingOut]
    decision: str | None
    job_id: str | None
    votes_in: int
    conflict: bool = Field(description="the votes in disagree: one more reviewer decides")
    votes: list[VoteOut] = Field(description="hidden until every vote the file needs is in")


class DatasetRefOut(BaseModel):
    id: str
    hash: str | None = None


class ExportOut(BaseModel):
    """An export request and where its review stands."""

    id: str
    title: str
    purpose: str
    state: Literal["draft", "submitted", "checking", "in_review", "changes_requested",
                   "approved", "rejected", "released", "withdrawn"]
    owner_id: str
    project: str | None
    reviewers_needed: int
    datasets: list[DatasetRefOut]
    jobs: list[str]
    total_bytes: int
    created_at: str | None
    submitted_at: str | None
    decided_at: str | None
    released_at: str | None
    files: list[FileOut]


class ExportsOut(BaseModel):
    exports: list[ExportOut]


class ExportsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["mine", "review"] = "mine"


class LinkOut(BaseModel):
    url: str = Field(description="GET it with the same account within expires_in seconds")
    expires_in: int
    sha256: str
    path: str
    size: int


def link_secret() -> str:
    """The key download links are signed with: the portal's own secret, for this use alone."""
    return hashlib.sha256(b"export-links:" + str(current_app.secret_key).encode()).hexdigest()


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


@bp.post("/exports")
@endpoint("Ask for files of ~/persistent to leave; they are pinned, checked and reviewed",
          body=ExportIn, response=ExportOut, status=201, tags=["exports"],
          scopes=[WORKLOAD_SCOPE])
def create_export(body: ExportIn) -> dict[str, Any]:
    ask = requests.ExportAsk(title=body.title, purpose=body.purpose, files=tuple(body.files),
                             submit=body.submit)
    with db_of().session() as session:
        return requests.create(session, _principal(), ask, config_of(), datasets_as_portal(),
                               outbox_of())


@bp.get("/exports")
@endpoint("Your export requests, or those waiting for your review (role=review)",
          query=ExportsQuery, response=ExportsOut, tags=["exports"], scopes=[WORKLOAD_SCOPE])
def list_exports(query: ExportsQuery) -> dict[str, Any]:
    with db_of().session() as session:
        return {"exports": requests.listing(session, _principal(), query.role,
                                            datasets_as_portal())}


@bp.get("/exports/<export_id>")
@endpoint("One export request with its files, checks and (when shown) votes",
          response=ExportOut, tags=["exports"], scopes=[WORKLOAD_SCOPE])
def show_export(export_id: str) -> dict[str, Any]:
    principal = _principal()
    with db_of().session() as session:
        row = requests.visible(session, principal, export_id, datasets_as_portal())
        return requests.request_out(session, row, principal)


@bp.post("/exports/<export_id>/submit")
@endpoint("Submit a draft: its files are pinned and checked", response=ExportOut,
          tags=["exports"], scopes=[WORKLOAD_SCOPE])
def submit_export(export_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        return requests.submit(session, _principal(), export_id, config_of(),
                               datasets_as_portal(), outbox_of())


@bp.post("/exports/<export_id>/withdraw")
@endpoint("Take your request back while it is open", response=ExportOut, tags=["exports"],
          scopes=[WORKLOAD_SCOPE])
def withdraw_export(export_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        return requests.withdraw(session, _principal(), export_id, outbox_of())


@bp.post("/exports/<export_id>/votes")
@endpoint("A reviewer's vote on one file (never the requester's)", body=VoteIn,
          response=ExportOut, tags=["exports"])
def vote_export(export_id: str, body: VoteIn) -> dict[str, Any]:
    with db_of().session() as session:
        return requests.vote(session, _principal(), export_id, body.file_id, body.vote,
                             body.comment, datasets_as_portal(), outbox_of())


@bp.post("/exports/<export_id>/files/<file_id>/link")
@endpoint("A short-lived download link to an approved file, for the requester alone",
          response=LinkOut, tags=["exports"])
def export_link(export_id: str, file_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        return requests.link(session, _principal(), export_id, file_id,
                             link_secret(), outbox_of())


@bp.get("/exports/download/<token>")
@endpoint("An approved file, through a link of your own that has not expired",
          tags=["exports"])
def export_download(token: str) -> Response:
    with db_of().session() as session:
        path, item = requests.download(session, _principal(), token, link_secret(),
                                       config_of(), outbox_of())
        name, digest = item.path.rsplit("/", 1)[-1], item.sha256
    answer = send_file(path, mimetype="application/octet-stream", as_attachment=True,
                       download_name=name, max_age=0)
    answer.headers["X-Content-SHA256"] = digest
    answer.headers["Cache-Control"] = "no-store"
    answer.headers["X-Content-Type-Options"] = "nosniff"
    return answer


class PolicyIn(BaseModel):
    """A project's export policy; null leaves a measure to the platform's setting."""

    model_config = ConfigDict(extra="forbid")
    reviewers: int | None = Field(None, ge=1, le=5, description=(
        "Independent reviewers each request needs (one is allowed)"))
    threshold: int | None = Field(None, ge=1, le=1000, description=(
        "Smallest count a table may show; smaller ones and zeros are flagged"))
    files_per_month: int | None = Field(None, ge=0, le=10**7)
    bytes_per_month: int | None = Field(None, ge=0, le=2**50)


class PolicyOut(BaseModel):
    project: str
    reviewers: int | None
    threshold: int | None
    files_per_month: int | None
    bytes_per_month: int | None


@bp.get("/exports/policies/<project>")
@endpoint("A project's export policy, with the platform's settings where it sets none",
          response=PolicyOut, tags=["exports"])
def show_policy(project: str) -> dict[str, Any]:
    with db_of().reading() as session:
        return requests.policy_out(requests.policy_of(session, project, config_of()))


@bp.put("/exports/policies/<project>")
@endpoint("Set a project's export policy (its stewards or an administrator)", body=PolicyIn,
          response=PolicyOut, tags=["exports"])
def put_policy(project: str, body: PolicyIn) -> dict[str, Any]:
    with db_of().session() as session:
        return requests.set_policy(session, _principal(), project, body.model_dump(),
                                   datasets_as_portal())
