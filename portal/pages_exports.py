"""Export pages: one's export requests and those waiting for one's review, a request with its
files, the automatic checks' findings and previews of the pinned copies, the reviewers' votes,
withdrawing, downloading approved files, and one's notifications. The pages act as the
signed-in person's own token says, through the same functions as the exports API, so a page
can show or do nothing the API would refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    send_file,
    url_for,
)
from flask import request as form_request
from flask_login import current_user, login_required

from portal import clients
from portal.api_exports import link_secret
from portal.exports import requests, store_of
from portal.exports.checks import REFUSE
from portal.exports.previews import TEXT_BYTES, Preview, preview_of
from portal.models import ExportFile, Notification
from portal.notifications import unread
from portal.pages_desktops import session_principal
from vre.db import utcnow
from vre.errors import ApiError, NotFound
from vre.outbox import outbox_of
from vre.web import config_of, db_of

bp = Blueprint("exports", __name__)

# How many notifications the page lists.
NOTIFICATIONS_SHOWN = 200
# What a reviewer's vote says, as the form offers it.
CHOICES = (("approve", "Approve"), ("changes", "Ask for changes"), ("reject", "Reject"))


def _pinned(request_id: str, file_id: str) -> Path:
    """The pinned copy of a file of a request: what was checked, reviewed and may leave."""
    return store_of(config_of()) / request_id / file_id


def _preview(request_id: str, file_id: str, path: str, size: int) -> Preview | None:
    """What the page shows of a pinned file (refused ones are never asked for); None when
    the pinned copy cannot be read."""
    try:
        with _pinned(request_id, file_id).open("rb") as pinned:
            head = pinned.read(TEXT_BYTES)
    except OSError:
        return None
    return preview_of(head, path, size)


def _shown(item: dict[str, Any]) -> bool:
    """Whether a file of a request is previewed at all: never one the checks refused."""
    return item["verdict"] != REFUSE and bool(item["sha256"])


@bp.get("/exports")
@login_required
def mine() -> Any:
    """The person's export requests, and those of their projects waiting for their review."""
    principal = session_principal()
    with db_of().session() as session:
        own = requests.listing(session, principal, "mine", clients.datasets_as_portal())
        review = requests.listing(session, principal, "review", clients.datasets_as_portal())
    waiting = [r for r in review if r["state"] == "in_review"]
    return render_template("exports.html", own=own, waiting=waiting)


@bp.get("/exports/<export_id>")
@login_required
def detail(export_id: str) -> Any:
    """One request: what and why, the datasets it came from, and each file with its hash, the
    checks' findings, its preview, the votes shown so far and the forms this person may use."""
    principal = session_principal()
    with db_of().session() as session:
        service = clients.datasets_as_portal()
        row = requests.visible(session, principal, export_id, service)
        export = requests.request_out(session, row, principal)
        reviewer = requests.may_review(principal, row, service)
    owner = export["owner_id"] == principal.subject
    previews = {f["id"]: _preview(export["id"], f["id"], f["path"], f["size"])
                for f in export["files"] if _shown(f)}
    page = make_response(render_template(
        "export.html", export=export, owner=owner, previews=previews, choices=CHOICES,
        open=export["state"] in requests.OPEN,
        reviewing=reviewer and export["state"] == "in_review",
        voted={f["id"] for f in export["files"]
               if any(v["reviewer_id"] == principal.subject for v in f["votes"])},
        downloadable=owner and export["state"] in ("approved", "released")))
    page.headers["Cache-Control"] = "no-store"
    return page


@bp.get("/exports/<export_id>/files/<file_id>/preview")
@login_required
def preview(export_id: str, file_id: str) -> Response:
    """A file's image (PNG, JPEG or GIF by its bytes) for the request's page, to those who
    may see the request; nothing of a file the automatic checks refused."""
    principal = session_principal()
    with db_of().session() as session:
        row = requests.visible(session, principal, export_id, clients.datasets_as_portal())
        item = session.get(ExportFile, file_id)
        if item is None or item.request_id != row.id or not _shown(
                {"verdict": item.verdict, "sha256": item.sha256}):
            abort(404)
        shown = _preview(row.id, item.id, item.path, item.size)
    if shown is None or shown.kind != "image":
        abort(404)
    answer = send_file(_pinned(export_id, file_id), mimetype=shown.mimetype, max_age=0)
    answer.headers["Content-Security-Policy"] = "default-src 'none'"
    answer.headers["X-Content-Type-Options"] = "nosniff"
    answer.headers["Content-Disposition"] = "inline"
    answer.headers["Cache-Control"] = "no-store"
    return answer


def _refused(exc: ApiError) -> None:
    if isinstance(exc, NotFound) and exc.code == "export_unknown":
        raise exc
    flash(f"{exc.message} ({exc.code})", "error")


@bp.post("/exports/<export_id>/files/<file_id>/vote")
@login_required
def vote(export_id: str, file_id: str) -> Any:
    """A reviewer's vote on one file from its form; a refusal is shown as a message."""
    principal = session_principal()
    choice = form_request.form.get("vote", "")
    comment = form_request.form.get("comment", "")[:4000].replace("\x00", "")
    if choice not in requests.VOTES:
        flash("Choose approve, ask for changes or reject. (bad_vote)", "error")
        return redirect(url_for("exports.detail", export_id=export_id))
    try:
        with db_of().session() as session:
            requests.vote(session, principal, export_id, file_id, choice, comment,
                          clients.datasets_as_portal(), outbox_of())
    except ApiError as exc:
        _refused(exc)
    else:
        flash(f"Your vote ({choice}) was recorded.", "info")
    return redirect(url_for("exports.detail", export_id=export_id))


@bp.post("/exports/<export_id>/withdraw")
@login_required
def withdraw(export_id: str) -> Any:
    """The requester takes their request back while it is open."""
    principal = session_principal()
    try:
        with db_of().session() as session:
            requests.withdraw(session, principal, export_id, outbox_of())
    except ApiError as exc:
        _refused(exc)
    else:
        flash("The request was withdrawn.", "info")
    return redirect(url_for("exports.detail", export_id=export_id))


@bp.post("/exports/<export_id>/files/<file_id>/download")
@login_required
def download(export_id: str, file_id: str) -> Any:
    """An approved file for the requester: a link is made and followed at once, so no link
    ever shows in a page; the pinned bytes come with the hash they were reviewed under."""
    principal = session_principal()
    secret = link_secret()
    try:
        with db_of().session() as session:
            made = requests.link(session, principal, export_id, file_id, secret, outbox_of())
        token = made["url"].rsplit("/", 1)[-1]
        with db_of().session() as session:
            path, item = requests.download(session, principal, token, secret, config_of(),
                                           outbox_of())
            name, digest = item.path.rsplit("/", 1)[-1], item.sha256
    except ApiError as exc:
        _refused(exc)
        return redirect(url_for("exports.detail", export_id=export_id))
    answer = send_file(path, mimetype="application/octet-stream", as_attachment=True,
                       download_name=name, max_age=0)
    answer.headers["X-Content-SHA256"] = digest
    answer.headers["Cache-Control"] = "no-store"
    answer.headers["X-Content-Type-Options"] = "nosniff"
    return answer


@bp.get("/notifications")
@login_required
def notifications() -> Any:
    """The person's notifications, newest first; showing them marks them read."""
    principal = session_principal()
    with db_of().session() as session:
        rows = list(session.scalars(
            sa.select(Notification).where(Notification.user_id == principal.subject)
            .order_by(Notification.created_at.desc(), Notification.id)
            .limit(NOTIFICATIONS_SHOWN)))
        shown = [{"text": n.text, "link": n.link, "at": n.created_at,
                  "unread": n.read_at is None} for n in rows]
        session.execute(sa.update(Notification).where(
            Notification.user_id == principal.subject, Notification.read_at.is_(None))
            .values(read_at=utcnow()))
    page = make_response(render_template("notifications.html", notifications=shown))
    page.headers["Cache-Control"] = "no-store"
    return page


@bp.app_context_processor
def _unread_count() -> dict[str, Any]:
    """The unread count the navigation shows, asked only for a signed-in person."""
    def count() -> int:
        if not current_user.is_authenticated:
            return 0
        subjects = [s for s in (current_user.id, current_user.external_subject) if s]
        with db_of().reading() as session:
            return unread(session, subjects)
    return {"unread_notifications": count}
