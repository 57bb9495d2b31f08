"""Desktop pages: one's desktops, the launch form, and the viewer that shows a desktop's screen
with noVNC (served from the operating system's novnc package, never copied here). The pages
act as the signed-in person's own token says, through the same functions as the desktops API,
so a page can do nothing the API would refuse."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask_login import login_required
from pydantic import ValidationError

from dataset_service.client import DatasetError
from portal import catalogues, clients, desktops, security
from portal.api_desktops import DesktopIn, ticket_for
from portal.compute import ComputeError
from portal.compute.agent import row_out
from portal.identity import access_token
from portal.models import ACTIVE_STATES, Workload
from portal.vncproxy import proxy_url
from vre.api import revoked_person, validation_error
from vre.client import ServiceError
from vre.db import utcnow
from vre.errors import ApiError, Forbidden, NotFound
from vre.tokens import Principal
from vre.web import config_of, db_of

bp = Blueprint("desktops", __name__)

# What of the noVNC package the viewer needs: its ES modules and the inflate code they import.
NOVNC_FOLDERS = ("core/", "vendor/")
# A dataset list is probed for use one dataset at a time; past this many the form stops asking.
MOST_DATASETS = 50


def session_principal() -> Principal:
    """The signed-in person as the API sees them: their own access token, validated, with the
    revocation check every API route makes. Later API calls in this request see it too."""
    principal = current_app.extensions["vre.validator"].validate(access_token())
    refusal = revoked_person(principal)
    if refusal:
        raise Forbidden(refusal, code="user_revoked")
    g.principal = principal
    return principal


def _own(principal: Principal, desktop_id: str) -> Workload:
    """The person's own desktop; anyone else's reads as one that does not exist."""
    with db_of().session() as session:
        row = desktops.visible(session, principal, desktop_id)
        if row.owner_id != principal.subject:
            raise NotFound(f"no desktop {desktop_id!r}", field="desktop_id")
        session.expunge(row)
        return row


def moment_of(value: Any) -> datetime | None:
    """A stored or ISO moment as an aware datetime (UTC when it names no zone); None if empty."""
    if not value:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def span(seconds: float) -> str:
    """A duration as people read it on a card: 45 s, 12 min, 3 h 20 min, 2 d."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{seconds // 86400} d"


def card(desktop: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A desktop as its card shows it: the record, its age, and the time left when known."""
    created, expires = moment_of(desktop.get("created_at")), moment_of(desktop.get("expires_at"))
    return {**desktop, "active": desktop.get("state") in ACTIVE_STATES,
            "age": span((now - created).total_seconds()) if created else "",
            "time_left": span((expires - now).total_seconds()) if expires else None}


@bp.get("/desktops")
@login_required
def mine() -> Any:
    """The person's desktops, running ones first, with open and stop."""
    principal = session_principal()
    now = utcnow()
    with db_of().session() as session:
        rows = [d for d in desktops.listing(session, principal)
                if d["owner_id"] == principal.subject]
    rows.sort(key=lambda d: d["state"] not in ACTIVE_STATES)
    return render_template("desktops.html", desktops=[card(d, now) for d in rows],
                           names=dataset_names() if rows else {})


def dataset_names() -> dict[str, str]:
    """Names of the datasets the person may see, by id (ids alone when the service is out)."""
    try:
        return {d["id"]: d["name"] for d in clients.datasets().datasets()}
    except ServiceError:
        return {}


def usable_datasets() -> tuple[list[dict[str, Any]], str | None]:
    """Released and published datasets the dataset service lets this person use (its policy
    answers the same for studying a fixed dataset's studies as for mounting it), and why the
    list may be short."""
    try:
        candidates = [d for d in clients.datasets().datasets()
                      if d["state"] in ("released", "published")]
    except ServiceError as exc:
        return [], f"the dataset service does not answer right now ({exc.code})"
    usable = []
    for dataset in candidates[:MOST_DATASETS]:
        try:
            clients.datasets().studies(dataset["id"], page=1, per_page=1)
        except DatasetError as exc:
            if exc.status in (401, 403, 404, 409):
                continue
            return usable, f"the dataset service does not answer right now ({exc.code})"
        usable.append(dataset)
    note = f"only the first {MOST_DATASETS} datasets are offered" \
        if len(candidates) > MOST_DATASETS else None
    return usable, note


def _launch_form(principal: Principal, chosen: dict[str, Any], error: str | None = None,
                 status: int = 200) -> Any:
    with db_of().session() as session:
        applications = [a for a in catalogues.applications(session, "desktop") if a.enabled]
        flavors = desktops.flavor_choices(session, principal,
                                          catalogues.host_capacity(config_of()), utcnow())
        choices = [(row.name, row.description, row.cpus, row.memory_mib, row.gpus,
                    row.max_runtime_minutes, decision) for row, decision in flavors]
        apps = [(a.id, a.name, a.description) for a in applications]
    datasets, note = usable_datasets()
    return render_template("desktop_new.html", applications=apps, flavors=choices,
                           datasets=datasets, datasets_note=note, chosen=chosen,
                           error=error), status


@bp.get("/desktops/new")
@login_required
def new() -> Any:
    """The launch form: desktop applications, the flavors this person may use (each one they
    cannot start now marked with why), and the datasets they may use."""
    return _launch_form(session_principal(), {"datasets": request.args.getlist("dataset")})


@bp.post("/desktops/new")
@login_required
def launch() -> Any:
    """Start the desktop the form asks for, then open it; a refusal is shown on the form."""
    principal = session_principal()
    chosen = {"application": request.form.get("application", "desktop"),
              "flavor": request.form.get("flavor", ""),
              "datasets": request.form.getlist("datasets")}
    try:
        body = DesktopIn.model_validate(chosen)
    except ValidationError as exc:
        err = validation_error(exc, "form")
        return _launch_form(principal, chosen, f"{err.message} ({err.code})", err.status)
    ask = desktops.DesktopRequest(application=body.application, flavor=body.flavor,
                                  datasets=tuple(dict.fromkeys(body.datasets)))
    try:
        with db_of().session() as session:
            started = desktops.start(session, principal, ask, clients.datasets_as_portal(),
                                     utcnow())
    except ApiError as exc:
        return _launch_form(principal, chosen, f"{exc.message} ({exc.code})",
                            exc.status if 400 <= exc.status < 600 else 500)
    return redirect(url_for("desktops.viewer", desktop_id=started["id"]))


@bp.get("/desktops/<desktop_id>")
@login_required
def viewer(desktop_id: str) -> Any:
    """The desktop's screen, filling the window, with its state, time left and controls. Its
    policy lets scripts connect to the VNC proxy and nowhere else beyond this site."""
    principal = session_principal()
    row = _own(principal, desktop_id)
    proxy = proxy_url(config_of())
    origin = proxy.split("/vnc", 1)[0]
    page = make_response(render_template("desktop.html", desktop=card(row_out(row), utcnow()),
                                         proxy=proxy))
    page.headers["Content-Security-Policy"] = security.policy_connecting_to(origin)
    page.headers["Cache-Control"] = "no-store"
    return page


@bp.get("/desktops/<desktop_id>/state")
@login_required
def state(desktop_id: str) -> Any:
    """The desktop as the compute agent sees it now (state, start-up progress, and its
    deadlines when the platform keeps them), for the viewer to follow."""
    principal = session_principal()
    _own(principal, desktop_id)
    try:
        shown = desktops.agent().show(desktop_id)
    except ComputeError as exc:
        raise ApiError(exc.reason, code=exc.code, status=503) from None
    shown["ready"] = bool(shown.pop("vnc_socket", None))
    return jsonify(shown)


@bp.post("/desktops/<desktop_id>/ticket")
@login_required
def ticket(desktop_id: str) -> Any:
    """A single-use ticket for the owner's viewer (the form's CSRF token comes in a header)."""
    principal = session_principal()
    _own(principal, desktop_id)
    answer = jsonify(ticket_for(principal, desktop_id).model_dump())
    answer.headers["Cache-Control"] = "no-store"
    return answer


@bp.post("/desktops/<desktop_id>/extend")
@login_required
def extend(desktop_id: str) -> Any:
    """Move one's desktop's expiry a step later; answers the desktop as the API does."""
    principal = session_principal()
    _own(principal, desktop_id)
    with db_of().session() as session:
        return jsonify(desktops.extend(session, principal, desktop_id))


@bp.post("/desktops/<desktop_id>/stop")
@login_required
def stop(desktop_id: str) -> Any:
    """Stop one's desktop; its grant ends with it."""
    principal = session_principal()
    _own(principal, desktop_id)
    try:
        with db_of().session() as session:
            desktops.stop(session, principal, desktop_id, clients.datasets_as_portal())
    except ApiError as exc:
        flash(f"{exc.message} ({exc.code})", "error")
    else:
        flash("The desktop was stopped.", "info")
    return redirect(url_for("desktops.mine"))


@bp.get("/novnc/<path:filename>")
def novnc(filename: str) -> Any:
    """noVNC's scripts from the configured package folder, and nothing else of it (no page
    of its own, and nothing outside the folder)."""
    if not filename.startswith(NOVNC_FOLDERS) or not filename.endswith(".js"):
        abort(404)
    return send_from_directory(config_of().novnc_path, filename, mimetype="text/javascript",
                               max_age=3600)
