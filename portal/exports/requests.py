"""Export requests, the one sanctioned way out: a researcher names files of ~/persistent and
why they must leave; at submission they are copied into the request and pinned by SHA-256,
the automatic checks run, and the request waits for its reviewers (the stewards of the
project its data came from, never the requester), who vote per file without seeing each
other's votes until theirs are in. Approved files are downloaded by the requester alone,
over short-lived links. Every step is traced with the file hashes and the datasets the files
came from."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dataset_service.client import DatasetClient, DatasetError, DatasetUnavailable
from portal.compute import ComputeError
from portal.compute.jobs import aware
from portal.compute.outputs import Unpinnable, checked_relative
from portal.desktops import agent, agent_error
from portal.exports import store_of
from portal.exports.checks import REFUSE, RequestLimits, check_limits, check_path
from portal.exports.known import known_for
from portal.models import (
    ExportFile,
    ExportPolicy,
    ExportRequest,
    ExportVote,
    Workload,
)
from portal.notifications import notify
from tracer.client import checked_trace
from vre.config import Config
from vre.errors import ApiError, Forbidden, NotFound, ServiceUnavailable
from vre.outbox import Outbox
from vre.tokens import Principal

VOTES = ("approve", "changes", "reject")
DECISION = {"approve": "approved", "changes": "changes_requested", "reject": "rejected"}
OPEN = ("draft", "submitted", "checking", "in_review", "changes_requested")
LINK_SECONDS = 60
PLATFORM = "service:portal"
_JOB_FILE = re.compile(r"^jobs/(j[0-9a-f]{16})/")


@dataclass(frozen=True)
class ExportAsk:
    """What a researcher asks to take out."""

    title: str
    purpose: str
    files: tuple[str, ...]
    submit: bool = True


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:16]


def create(session: Session, principal: Principal, ask: ExportAsk, config: Config,
           datasets_service: DatasetClient, outbox: Outbox | None) -> dict[str, Any]:
    """A new request with its files named; submitted at once unless kept as a draft."""
    if principal.is_service:
        raise Forbidden("exports are asked for by people", code="not_a_person")
    paths = list(dict.fromkeys(ask.files))
    for path in paths:
        try:
            checked_relative(path)
        except Unpinnable as exc:
            raise ApiError(exc.reason, code=exc.code, status=422, field="files") from None
    if len(paths) > config.export_max_files:
        raise ApiError(f"a request takes at most {config.export_max_files} files",
                       code="too_many_files", status=422, field="files")
    row = ExportRequest(id=_new_id("e"), owner_id=principal.subject, title=ask.title,
                        purpose=ask.purpose, state="draft",
                        reviewers_needed=config.export_reviewers, datasets=[], jobs=[],
                        workload_id=principal.workload_id, total_bytes=0)
    session.add(row)
    session.flush()  # the request before its files (their foreign key)
    for path in paths:
        job = _JOB_FILE.match(path)
        session.add(ExportFile(id=_new_id("f"), request_id=row.id, path=path, size=0,
                               sha256="", verdict="pass", findings=[],
                               job_id=job.group(1) if job else None))
    session.flush()
    if ask.submit:
        return submit(session, principal, row.id, config, datasets_service, outbox)
    return request_out(session, row, principal)


def _owned(session: Session, principal: Principal, request_id: str) -> ExportRequest:
    row = session.get(ExportRequest, request_id)
    if row is None or row.owner_id != principal.subject:
        raise NotFound(f"no export request {request_id!r} of yours", code="export_unknown",
                       field="export_id")
    return row


def submit(session: Session, principal: Principal, request_id: str, config: Config,
           datasets_service: DatasetClient, outbox: Outbox | None) -> dict[str, Any]:
    """Pin the files, find where their data came from, run the checks, and hand the request
    to its reviewers; a file that cannot be pinned refuses the whole submission."""
    row = _owned(session, principal, request_id)
    if row.state != "draft":
        raise ApiError(f"the request is {row.state}", code="wrong_state", status=409)
    files = list(session.scalars(sa.select(ExportFile).where(ExportFile.request_id == row.id)))
    if not files:
        raise ApiError("a request needs at least one file", code="no_files", status=422)
    mounts = _provenance(session, row, files)
    row.datasets = [{"id": m["dataset_id"], "hash": m["content_hash"]} for m in mounts]
    row.jobs = sorted({f.job_id for f in files if f.job_id})
    row.project = _project(mounts)
    try:
        pinned = agent().pin(row.id, row.owner_id, [{"id": f.id, "path": f.path}
                                                    for f in files],
                             config.export_max_file_bytes)
    except ComputeError as exc:
        raise agent_error(exc) from None
    by_id = {p["id"]: p for p in pinned}
    for item in files:
        item.size, item.sha256 = by_id[item.id]["size"], by_id[item.id]["sha256"]
    row.total_bytes = sum(f.size for f in files)
    policy = policy_of(session, row.project, config)
    row.reviewers_needed = policy.reviewers or config.export_reviewers
    _check(session, row, files, mounts, config, policy)
    row.submitted_at = _now()
    if all(f.verdict == REFUSE for f in files):
        row.state, row.decided_at = "rejected", _now()
    else:
        row.state = "in_review"
    _trace(outbox, session, row, row.owner_id, "EXPORT_REQUESTED", files)
    if row.state == "rejected":
        _trace(outbox, session, row, PLATFORM, "EXPORT_REJECTED", files, "refused_by_checks")
    _notify(session, row.owner_id, row, f"Your export request “{row.title}” is {_said(row)}.")
    for steward in _stewards(datasets_service, row.project) - {row.owner_id}:
        if row.state == "in_review":
            _notify(session, steward, row, f"An export request “{row.title}” waits for your "
                    "review.")
    return request_out(session, row, principal)


def _provenance(session: Session, row: ExportRequest,
                files: list[ExportFile]) -> list[dict[str, Any]]:
    """The datasets the files came from: the jobs that wrote them, the workload the request
    came from, else every workload of the owner in the last 30 days (more is never less
    safe: reviewers and the identifier checks see all of them)."""
    ids = {f.job_id for f in files if f.job_id} | ({row.workload_id} if row.workload_id
                                                    else set())
    query = sa.select(Workload).where(Workload.owner_id == row.owner_id)
    if ids:
        query = query.where(Workload.id.in_(ids))
    else:
        query = query.where(Workload.created_at >= _now() - timedelta(days=30))
    mounts: dict[str, dict[str, Any]] = {}
    for workload in session.scalars(query):
        for mount in workload.spec.get("mounts", []):
            mounts.setdefault(mount["content_hash"], mount)
    return list(mounts.values())


def _project(mounts: list[dict[str, Any]]) -> str | None:
    """The project whose stewards review: that of the datasets the files came from."""
    return next((m["project"] for m in mounts if m.get("project")), None)


def _stewards(datasets_service: DatasetClient, project: str | None) -> set[str]:
    """Who may review a request whose data came from the project: its stewards."""
    if project is None:
        return set()
    try:
        members = datasets_service.members(project)
    except DatasetUnavailable:
        raise ServiceUnavailable("the dataset service does not answer; try again",
                                 code="datasets_unavailable") from None
    except DatasetError:
        return set()
    return {m["user_id"] for m in members if m.get("role") == "steward"}


def policy_of(session: Session, project: str | None, config: Config) -> ExportPolicy:
    """The project's export policy, the platform's settings filling what it leaves open."""
    own = session.get(ExportPolicy, project) if project else None
    return ExportPolicy(
        project=project or "", reviewers=(own and own.reviewers) or config.export_reviewers,
        threshold=(own and own.threshold) or config.export_threshold,
        files_per_month=own.files_per_month if own else None,
        bytes_per_month=own.bytes_per_month if own else None)


def _allowance_left(session: Session, row: ExportRequest,
                    policy: ExportPolicy) -> tuple[int | None, int | None]:
    """What the project may still export this month (files, bytes): its allowance less the
    requests submitted since the month began that were not rejected or withdrawn."""
    if row.project is None or (policy.files_per_month is None
                               and policy.bytes_per_month is None):
        return None, None
    since = _now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    counted = sa.select(ExportRequest.id).where(
        ExportRequest.project == row.project, ExportRequest.id != row.id,
        ExportRequest.submitted_at >= since,
        ExportRequest.state.not_in(("rejected", "withdrawn")))
    files = session.scalar(sa.select(sa.func.count()).select_from(ExportFile).where(
        ExportFile.request_id.in_(counted))) or 0
    used = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(ExportRequest.total_bytes), 0))
                          .where(ExportRequest.id.in_(counted))) or 0
    return (None if policy.files_per_month is None else max(0, policy.files_per_month - files),
            None if policy.bytes_per_month is None else max(0, policy.bytes_per_month - used))


def _check(session: Session, row: ExportRequest, files: list[ExportFile],
           mounts: list[dict[str, Any]], config: Config, policy: ExportPolicy) -> None:
    """The automatic checks on the pinned copies; a refused file is rejected for good."""
    trees = [(m["content_hash"], config.repository_path / m["tree"]) for m in mounts]
    known = known_for(trees, store_of(config) / "known", policy.threshold or 10)
    folder = store_of(config) / row.id
    files_left, bytes_left = _allowance_left(session, row, policy)
    whole = check_limits([(f.path, f.size) for f in files], RequestLimits(
        max_files=config.export_max_files, max_bytes=config.export_max_bytes,
        max_file_bytes=config.export_max_file_bytes, project_files_left=files_left,
        project_bytes_left=bytes_left))
    for item in files:
        verdict = check_path(folder / item.id, known, name=item.path)
        findings = [*verdict.findings, *whole]
        item.findings = [{"code": f.code, "severity": f.severity, "reason": f.reason,
                          "where": f.where} for f in findings]
        item.verdict = max((f["severity"] for f in item.findings),
                           key=("pass", "flag", "refuse").index, default="pass")
        if item.verdict == REFUSE:
            item.decision = "rejected"


# -- review ---------------------------------------------------------------------------------

def visible(session: Session, principal: Principal, request_id: str,
            datasets_service: DatasetClient) -> ExportRequest:
    """A request its owner, its project's stewards (once submitted) or an administrator may
    see; to anyone else it does not exist."""
    row = session.get(ExportRequest, request_id)
    if row is not None and (row.owner_id == principal.subject or principal.has_any("admin")
                            or (row.state != "draft" and principal.workload_id is None
                                and principal.subject in _stewards(datasets_service,
                                                                   row.project))):
        return row
    raise NotFound(f"no export request {request_id!r}", code="export_unknown",
                   field="export_id")


def may_review(principal: Principal, row: ExportRequest,
               datasets_service: DatasetClient) -> bool:
    """Whether this person reviews the request: a steward of the project its data came from,
    signed in as themselves (never a workload), and not its requester."""
    return (principal.workload_id is None and row.owner_id != principal.subject
            and principal.subject in _stewards(datasets_service, row.project))


def vote(session: Session, principal: Principal, request_id: str, file_id: str,
         choice: str, comment: str, datasets_service: DatasetClient,
         outbox: Outbox | None) -> dict[str, Any]:
    """One reviewer's vote on one file. Once the votes a file needs are in and agree, it is
    decided; votes that disagree wait for one more reviewer, whose vote decides."""
    row = visible(session, principal, request_id, datasets_service)
    if row.owner_id == principal.subject:
        raise Forbidden("nobody reviews their own request", code="own_request")
    if not may_review(principal, row, datasets_service):
        raise Forbidden("only the stewards of the project the data came from review it",
                        code="not_a_reviewer")
    if row.state != "in_review":
        raise ApiError(f"the request is {row.state}", code="not_in_review", status=409)
    item = session.get(ExportFile, file_id)
    if item is None or item.request_id != row.id:
        raise NotFound(f"no file {file_id!r} in this request", code="file_unknown",
                       field="file_id")
    if item.verdict == REFUSE:
        raise ApiError("the automatic checks refused this file; it can never leave",
                       code="file_refused", status=409)
    if item.decision is not None:
        raise ApiError("this file is decided", code="file_decided", status=409)
    if session.scalar(sa.select(ExportVote.id).where(
            ExportVote.file_id == item.id, ExportVote.reviewer_id == principal.subject)):
        raise ApiError("you have voted on this file", code="vote_exists", status=409)
    session.add(ExportVote(request_id=row.id, file_id=item.id, reviewer_id=principal.subject,
                           vote=choice, comment=comment, created_at=_now()))
    session.flush()
    votes = [v.vote for v in _votes(session, item.id)]
    if len(votes) >= row.reviewers_needed:
        agreed = set(votes[:row.reviewers_needed])
        if len(agreed) == 1:
            item.decision = DECISION[votes[0]]
        elif len(votes) > row.reviewers_needed:
            item.decision = DECISION[votes[-1]]  # the deciding vote after a conflict
    _trace(outbox, session, row, principal.subject, "EXPORT_REVIEWED", [item],
           DECISION[choice])
    _settle(session, row, outbox)
    return request_out(session, row, principal)


def _votes(session: Session, file_id: str) -> list[ExportVote]:
    return list(session.scalars(sa.select(ExportVote).where(ExportVote.file_id == file_id)
                                .order_by(ExportVote.created_at, ExportVote.id)))


def _settle(session: Session, row: ExportRequest, outbox: Outbox | None) -> None:
    """Once every file is decided, the request is: approved when some file may leave and
    none needs changes, changes requested when one does, else rejected."""
    files = list(session.scalars(sa.select(ExportFile).where(ExportFile.request_id == row.id)))
    decisions = [f.decision for f in files]
    if None in decisions:
        return
    if "changes_requested" in decisions:
        row.state = "changes_requested"
    elif "approved" in decisions:
        row.state = "approved"
    else:
        row.state = "rejected"
    row.decided_at = _now()
    action = "EXPORT_APPROVED" if row.state == "approved" else "EXPORT_REJECTED"
    _trace(outbox, session, row, PLATFORM, action,
           [f for f in files if f.decision == "approved"] or files, row.state)
    _notify(session, row.owner_id, row, f"Your export request “{row.title}” is {_said(row)}.")


def withdraw(session: Session, principal: Principal, request_id: str,
             outbox: Outbox | None = None) -> dict[str, Any]:
    """The requester takes a request back while it is open (traced once it was submitted:
    nothing of it leaves)."""
    row = _owned(session, principal, request_id)
    if row.state not in OPEN:
        raise ApiError(f"the request is {row.state}", code="wrong_state", status=409)
    submitted = row.state != "draft"
    row.state, row.decided_at = "withdrawn", _now()
    if submitted:
        files = list(session.scalars(sa.select(ExportFile).where(
            ExportFile.request_id == row.id)))
        _trace(outbox, session, row, row.owner_id, "EXPORT_REJECTED", files, "withdrawn")
    return request_out(session, row, principal)


# -- release --------------------------------------------------------------------------------

def link(session: Session, principal: Principal, request_id: str, file_id: str,
         secret: str, outbox: Outbox | None) -> dict[str, Any]:
    """A short-lived link to one approved file, for the requester alone; the first one
    releases the request."""
    row = _owned(session, principal, request_id)
    if principal.workload_id is not None:
        raise Forbidden("results are downloaded outside the platform's workloads",
                        code="not_from_a_workload")
    item = _approved_file(session, row, file_id)
    if row.state == "approved":
        row.state, row.released_at = "released", _now()
        files = [f for f in session.scalars(sa.select(ExportFile).where(
            ExportFile.request_id == row.id)) if f.decision == "approved"]
        _trace(outbox, session, row, row.owner_id, "EXPORT_RELEASED", files, "released")
    expires = int(time.time()) + LINK_SECONDS
    token = _sign(secret, f"{row.id}.{item.id}.{principal.subject}.{expires}")
    return {"url": f"/api/v1/exports/download/{token}", "expires_in": LINK_SECONDS,
            "sha256": item.sha256, "path": item.path, "size": item.size}


def _approved_file(session: Session, row: ExportRequest, file_id: str) -> ExportFile:
    item = session.get(ExportFile, file_id)
    if item is None or item.request_id != row.id:
        raise NotFound(f"no file {file_id!r} in this request", code="file_unknown",
                       field="file_id")
    if row.state not in ("approved", "released") or item.decision != "approved" \
            or item.verdict == REFUSE:
        raise Forbidden("only approved files of an approved request leave",
                        code="not_approved")
    return item


def _sign(secret: str, message: str) -> str:
    mac = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    payload = base64.urlsafe_b64encode(message.encode()).decode().rstrip("=")
    return payload + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _opened(secret: str, token: str) -> tuple[str, str, str, int]:
    payload, _, mac = token.partition(".")
    try:
        message = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        rid, fid, subject, expires = message.split(".", 3)
        good = hmac.compare_digest(_sign(secret, message).partition(".")[2], mac)
        return (rid, fid, subject, int(expires)) if good else ("", "", "", 0)
    except (ValueError, UnicodeDecodeError):
        return "", "", "", 0


def download(session: Session, principal: Principal, token: str, secret: str,
             config: Config, outbox: Outbox | None) -> tuple[Path, ExportFile]:
    """The pinned copy an unexpired link of this very account names, once more checked to
    be approved; traced as downloaded."""
    rid, fid, subject, expires = _opened(secret, token)
    if not rid or subject != principal.subject or principal.workload_id is not None:
        raise NotFound("no such download", code="link_unknown")
    if expires < time.time():
        raise ApiError("this link has expired; ask for a new one", code="link_expired",
                       status=410)
    row = _owned(session, principal, rid)
    item = _approved_file(session, row, fid)
    _trace(outbox, session, row, principal.subject, "EXPORT_DOWNLOADED", [item], "downloaded")
    return store_of(config) / row.id / item.id, item


# -- reading --------------------------------------------------------------------------------

def _said(row: ExportRequest) -> str:
    return row.state.replace("_", " ")


def request_out(session: Session, row: ExportRequest, viewer: Principal) -> dict[str, Any]:
    """A request as the API answers it. Votes stay hidden from a reviewer until they voted
    on the file and all the votes it needs are in, and from the requester until decided."""
    files = list(session.scalars(sa.select(ExportFile).where(ExportFile.request_id == row.id)
                                 .order_by(ExportFile.path)))
    out_files = []
    for item in files:
        votes = _votes(session, item.id) if row.state != "draft" else []
        mine = any(v.reviewer_id == viewer.subject for v in votes)
        shown = viewer.has_any("admin") or item.decision is not None or (
            mine and len(votes) >= row.reviewers_needed)
        visible_votes = votes if shown else [v for v in votes if v.reviewer_id == viewer.subject]
        if viewer.subject == row.owner_id and item.decision is None:
            visible_votes = []
        out_files.append({
            "id": item.id, "path": item.path, "size": item.size, "sha256": item.sha256,
            "verdict": item.verdict, "findings": item.findings, "decision": item.decision,
            "job_id": item.job_id, "votes_in": len(votes),
            "conflict": item.decision is None and len(votes) >= row.reviewers_needed,
            "votes": [{"reviewer_id": v.reviewer_id, "vote": v.vote, "comment": v.comment,
                       "at": aware(v.created_at).isoformat()} for v in visible_votes]})
    return {"id": row.id, "title": row.title, "purpose": row.purpose, "state": row.state,
            "owner_id": row.owner_id, "project": row.project,
            "reviewers_needed": row.reviewers_needed, "datasets": row.datasets,
            "jobs": row.jobs, "total_bytes": row.total_bytes,
            "created_at": _iso(row.created_at), "submitted_at": _iso(row.submitted_at),
            "decided_at": _iso(row.decided_at), "released_at": _iso(row.released_at),
            "files": out_files}


def listing(session: Session, principal: Principal, role: str,
            datasets_service: DatasetClient) -> list[dict[str, Any]]:
    """The caller's requests (`mine`), or those waiting for them to review (`review`)."""
    query = sa.select(ExportRequest).order_by(ExportRequest.created_at.desc()).limit(200)
    if role == "mine":
        rows = session.scalars(query.where(ExportRequest.owner_id == principal.subject))
    else:
        projects = _projects_stewarded(datasets_service, principal)
        rows = session.scalars(query.where(
            ExportRequest.project.in_(projects), ExportRequest.state != "draft",
            ExportRequest.owner_id != principal.subject))
    return [request_out(session, r, principal) for r in rows]


def _projects_stewarded(datasets_service: DatasetClient, principal: Principal) -> list[str]:
    try:
        projects = datasets_service.projects()
    except (DatasetError, DatasetUnavailable):
        return []
    # Requests name their project as grants do: by name.
    return [p["name"] for p in projects
            if principal.subject in _stewards(datasets_service, p["name"])]


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment else None


def _now() -> datetime:
    from vre.db import utcnow

    return utcnow()


def _notify(session: Session, user_id: str, row: ExportRequest, text: str) -> None:
    notify(session, user_id, text, f"/exports/{row.id}")


def _trace(outbox: Outbox | None, session: Session, row: ExportRequest, actor: str,
           action: str, files: list[ExportFile], decision: str | None = None) -> None:
    if outbox is None:
        return
    outbox.record(session, checked_trace({
        "actor": actor, "action": action, "datasets": row.datasets,
        "details": {k: v for k, v in {
            "request_id": row.id, "subject_user": row.owner_id, "project": row.project,
            "file_hashes": ["sha256:" + f.sha256 for f in files if f.sha256][:1000],
            "decision": decision}.items() if v}}))


def set_policy(session: Session, principal: Principal, project: str, values: dict[str, Any],
               datasets_service: DatasetClient) -> dict[str, Any]:
    """Set a project's export policy: its stewards or an administrator."""
    if not principal.has_any("admin"):
        try:  # fails closed: a steward the dataset service cannot confirm is none
            stewards = _stewards(datasets_service, project) \
                if principal.workload_id is None else set()
        except ServiceUnavailable:
            stewards = set()
        if principal.subject not in stewards:
            raise Forbidden("only the project's stewards or an administrator set its export "
                            "policy", code="not_a_steward")
    row = session.get(ExportPolicy, project)
    if row is None:
        row = ExportPolicy(project=project)
        session.add(row)
    for name in ("reviewers", "threshold", "files_per_month", "bytes_per_month"):
        setattr(row, name, values.get(name))
    row.updated_by, row.updated_at = principal.subject, _now()
    session.flush()
    return policy_out(row)


def policy_out(row: ExportPolicy) -> dict[str, Any]:
    return {"project": row.project, "reviewers": row.reviewers, "threshold": row.threshold,
            "files_per_month": row.files_per_month, "bytes_per_month": row.bytes_per_month}
