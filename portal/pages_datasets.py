"""Signed-in dataset pages: the explorer (metadata only), the verified history, the access
log, access requests, and the steward's actions. Every decision is the dataset service's:
these pages call it with the user's token and show what it answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from dataset_service.client import DatasetError
from portal import clients
from portal.models import User
from portal.pagecache import forget_pages
from portal.pages_catalogue import load, paragraphs
from tracer.client import TracerError
from vre.client import ServiceError
from vre.web import db_of

bp = Blueprint("datasets", __name__)

STATE_ACTIONS = {"release": "released", "publish": "published", "invalidate": "invalidated"}
STUDY_FILTERS = ("modality", "body_part", "age_min", "age_max", "sex", "diagnosis")


def _int_arg(name: str, default: int = 1, top: int = 100_000) -> int:
    try:
        return max(1, min(int(request.args.get(name, default)), top))
    except ValueError:
        return default


class Refused(Exception):
    """The dataset service's policy said no to this page; shown as a 403 page with why."""

    def __init__(self, dataset: dict[str, Any], code: str, reason: str,
                 status: int = 403) -> None:
        super().__init__(reason)
        self.dataset, self.code, self.reason, self.status = dataset, code, reason, status


@contextmanager
def asked_of_policy(dataset: dict[str, Any]) -> Iterator[None]:
    """Turn the dataset service's refusal (403) of what a page asks into the refusal page."""
    try:
        yield
    except DatasetError as exc:
        if exc.status != 403:
            raise
        raise Refused(dataset, exc.code, exc.message) from None


@bp.errorhandler(Refused)
def _refused_page(refused: Refused) -> Any:
    return render_template("refused.html", dataset=refused.dataset, reason=refused.reason,
                           code=refused.code), refused.status


def _refused(exc: ServiceError) -> None:
    """Show a refusal of a form action as a message on the page it came from."""
    if isinstance(exc, DatasetError) and exc.status in (401, 404):
        abort(404)
    flash(f"{exc.message} ({exc.code})", "error")


@bp.get("/my/datasets")
@login_required
def mine() -> Any:
    """Every dataset the user may see, whatever its state (drafts they write included)."""
    return render_template("my_datasets.html", datasets=clients.datasets().datasets())


@bp.get("/datasets/<dataset_id>/explore")
@login_required
def explore(dataset_id: str) -> Any:
    dataset = load(dataset_id)
    with asked_of_policy(dataset):
        page = clients.datasets().studies(dataset_id, _int_arg("page"), 25)
    return render_template("explore.html", dataset=dataset, page=page,
                           url=lambda page: url_for("datasets.explore",
                                                    dataset_id=dataset_id, page=page))


@bp.get("/datasets/<dataset_id>/history")
def history(dataset_id: str) -> Any:
    """The dataset's traces, each marked verified when its proof reaches the chain's root.

    Published histories are public; others need the dataset policy's VIEW_ACCESS_LOG, which
    is asked of the dataset service before the portal reads the ledger for the user."""
    dataset = load(dataset_id)
    if dataset["state"] != "published":
        if not current_user.is_authenticated:
            return redirect(url_for("pages.signin", next=request.path))
        with asked_of_policy(dataset):
            clients.datasets().access_log(dataset_id, per_page=1)
        whole = True
    else:
        whole = _may_see_who(dataset_id)
    try:
        # The whole traces are what is verified; the public extract, as the tracer's own
        # disclosure rules make it for anyone, is what others are shown of them.
        traces = list(clients.tracer().query(dataset=dataset_id))
        shown = traces if whole else list(clients.public_tracer().query(dataset=dataset_id))
    except TracerError as exc:
        raise Refused(dataset, exc.code, "the audit ledger cannot be read right now",
                      503) from None
    checks = clients.trace_verifier().check(traces)
    verified = {t["id"] for t in traces}
    shown = [t for t in reversed(shown) if t["id"] in verified]  # newest first
    return render_template("history.html", dataset=dataset, traces=shown, checks=checks,
                           whole=whole,
                           names=usernames({t["actor"] for t in shown}) if whole else {})


def _may_see_who(dataset_id: str) -> bool:
    """Whether the visitor may see who acted on a published dataset and why: its stewards,
    administrators and auditors (the dataset policy's VIEW_ACCESS_LOG); anyone else sees
    the public extract."""
    if not current_user.is_authenticated:
        return False
    try:
        clients.datasets().access_log(dataset_id, per_page=1)
    except DatasetError as exc:
        if exc.status in (401, 403, 404):
            return False
        raise
    return True


def usernames(user_ids: set[str]) -> dict[str, str]:
    """Who the ids in the ledger are, for people reading a page (services keep their id)."""
    with db_of().session() as session:
        return dict(session.execute(sa.select(User.id, User.username).where(
            User.id.in_(user_ids))).all())


@bp.get("/datasets/<dataset_id>/access-log")
@login_required
def access_log(dataset_id: str) -> Any:
    dataset = load(dataset_id)
    with asked_of_policy(dataset):
        entries = clients.datasets().access_log(dataset_id, _int_arg("page"), 100)
    return render_template("access_log.html", dataset=dataset, entries=entries,
                           page=_int_arg("page"))


@bp.post("/datasets/<dataset_id>/request-access")
@login_required
def ask_access(dataset_id: str) -> Any:
    purpose = request.form.get("purpose", "").strip()
    try:
        clients.datasets().request_access(dataset_id, purpose)
        flash("Your request was sent to the dataset's stewards.", "ok")
    except DatasetError as exc:
        _refused(exc)
    return redirect(url_for("catalogue.landing", dataset_id=dataset_id))


@bp.get("/requests")
@login_required
def requests_page() -> Any:
    client = clients.datasets()
    return render_template("requests.html", mine=client.requests("mine"),
                           to_review=client.requests("to_review", "pending"))


@bp.post("/requests/<request_id>/decide")
@login_required
def decide(request_id: str) -> Any:
    approve = request.form.get("decision") == "approve"
    try:
        clients.datasets().decide_request(request_id, approve,
                                          request.form.get("note", "")[:500])
        flash("Request approved." if approve else "Request rejected.", "ok")
    except DatasetError as exc:
        _refused(exc)
    return redirect(url_for("datasets.requests_page"))


# -- stewards ------------------------------------------------------------------------------

@bp.get("/datasets/<dataset_id>/manage")
@login_required
def manage(dataset_id: str) -> Any:
    dataset = load(dataset_id)
    client = clients.datasets()
    with asked_of_policy(dataset):
        access = client.access_list(dataset_id)
        pending = [r for r in client.dataset_requests(dataset_id) if r["state"] == "pending"]
    return render_template("manage.html", dataset=dataset, access=access, pending=pending,
                           actions=STATE_ACTIONS)


@bp.post("/datasets/<dataset_id>/<action>")
@login_required
def change_state(dataset_id: str, action: str) -> Any:
    if action not in STATE_ACTIONS:
        abort(404)
    client = clients.datasets()
    try:
        if action == "invalidate":
            client.invalidate(dataset_id, request.form.get("reason", "").strip())
        else:
            getattr(client, action)(dataset_id)
        forget_pages()
        flash(f"Dataset {STATE_ACTIONS[action]}.", "ok")
    except ServiceError as exc:
        _refused(exc)
    return redirect(url_for("datasets.manage", dataset_id=dataset_id))


@bp.post("/datasets/<dataset_id>/access")
@login_required
def change_access(dataset_id: str) -> Any:
    user_id = request.form.get("user_id", "").strip()
    client = clients.datasets()
    try:
        if request.form.get("remove"):
            client.remove_access(dataset_id, user_id)
            flash(f"{user_id} was taken off the access list.", "ok")
        else:
            client.add_access(dataset_id, user_id)
            flash(f"{user_id} may now use the dataset.", "ok")
    except ServiceError as exc:
        _refused(exc)
    return redirect(url_for("datasets.manage", dataset_id=dataset_id))


def _study_query(form: Any) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name in STUDY_FILTERS:
        value = form.get(name, "").strip()
        if value:
            query[name] = int(value) if name.startswith("age_") and value.isdigit() else value
    return query


def _lines(text: str) -> list[str]:
    return [w.strip() for w in text.replace(",", "\n").splitlines() if w.strip()]


@bp.route("/datasets/new", methods=["GET", "POST"])
@login_required
def create() -> Any:
    """Create a dataset from a study query: preview what it selects, then create the draft."""
    client = clients.datasets()
    form = request.form if request.method == "POST" else request.args
    projects = client.projects()
    preview = None
    query = _study_query(form)
    if form.get("project"):
        try:
            preview = client.search_studies(form["project"], **query, limit=10)
        except DatasetError as exc:
            _refused(exc)
    if request.method == "POST" and form.get("create") and preview is not None:
        body: dict[str, Any] = {
            "project": form["project"], "name": form.get("name", "").strip(),
            "description": form.get("description", ""), "query": query,
            "version": form.get("version", "").strip() or "1.0",
            "keywords": _lines(form.get("keywords", "")),
            "authors": [{"name": a} for a in _lines(form.get("authors", ""))],
            "purpose": form.get("purpose", ""), "provenance": form.get("provenance", ""),
        }
        for optional in ("license_id", "contact_name", "contact_email"):
            if form.get(optional, "").strip():
                body[optional] = form[optional].strip()
        try:
            created = client.create_dataset(body)
        except DatasetError as exc:
            flash(f"{exc.message} ({exc.code}{': ' + exc.field if exc.field else ''})",
                  "error")
        else:
            flash("Draft created. Check it, then release it.", "ok")
            return redirect(url_for("datasets.manage", dataset_id=created["id"]))
    return render_template("create_dataset.html", projects=projects, form=form,
                           preview=preview)


@bp.route("/datasets/<dataset_id>/edit", methods=["GET", "POST"])
@login_required
def edit(dataset_id: str) -> Any:
    dataset = load(dataset_id)
    if request.method == "POST":
        form = request.form
        texts = {"name": str.strip, "description": str, "purpose": str, "provenance": str,
                 "contact_name": str.strip, "keywords": _lines}
        # Only what the form sent changes: a partial form never blanks the rest.
        changes: dict[str, Any] = {k: f(form[k]) for k, f in texts.items() if k in form}
        if "public_use_shown" in form:  # an unticked box sends nothing; the form says it was there
            changes["public_use"] = form.get("public_use") == "on"
        if form.get("license_id", "").strip() not in ("", dataset["license_id"]):
            changes["license_id"] = form["license_id"].strip()
        try:
            clients.datasets().update_dataset(dataset_id, changes)
        except DatasetError as exc:
            flash(f"{exc.message} ({exc.code}{': ' + exc.field if exc.field else ''})",
                  "error")
            return render_template("edit_dataset.html", dataset={**dataset, **changes}), 422
        forget_pages()
        flash("Saved.", "ok")
        return redirect(url_for("datasets.manage", dataset_id=dataset_id))
    return render_template("edit_dataset.html", dataset=dataset)


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    return {"paragraphs": paragraphs}
