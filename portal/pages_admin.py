"""Administration pages: user accounts and their roles, projects and their members (kept by
the dataset service), the application and flavor catalogues, and quotas. Administrators only:
one check before every route, so no page can forget it."""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from sqlalchemy.orm import Session

from dataset_service.client import DatasetError, DatasetUnavailable
from portal import catalogues, clients, desktops
from portal.accounts import create_account
from portal.api import UserCreate
from portal.catalogues import ApplicationIn, FlavorIn, QuotaIn, validated
from portal.compute.agent import row_out
from portal.identity import identity_of
from portal.models import ACTIVE_STATES, EVERYONE, ROLES, BrowserSession, User, Workload
from portal.pages_desktops import session_principal
from portal.revocations import changed, end_tokens_of
from vre.errors import ApiError, Forbidden, NotFound
from vre.revocation import person_refusal, revocations_of
from vre.web import config_of, db_of

bp = Blueprint("admin", __name__, url_prefix="/admin")

MEMBER_ROLES = ("steward", "researcher")
LIMITS = (("max_desktops", "Running desktops", int),
          ("max_jobs", "Queued and running jobs", int), ("max_gpus", "GPUs in use", int),
          ("cpu_hours_per_month", "CPU-hours a month", float),
          ("gpu_hours_per_month", "GPU-hours a month", float))


@bp.before_request
def _administrators_only() -> Any:
    """Anonymous visitors are sent to sign in; signed-in people without the role get 403."""
    if not current_user.is_authenticated:
        return redirect(url_for("pages.signin", next=request.path))
    if "admin" not in (current_user.roles or []):
        raise Forbidden("administration needs the admin role", code="not_an_admin")
    state = revocations_of(current_app)
    refusal = person_refusal(current_user.token_subject, state.snapshot()) if state else None
    if refusal:
        raise Forbidden(refusal, code="user_revoked")
    return None


# -- helpers ------------------------------------------------------------------------------

def _failed(err: ApiError | DatasetError) -> int:
    """Show a refused form as a message on the page it came from; the status to answer."""
    where = f": {err.field}" if err.field else ""
    flash(f"{err.message} ({err.code}{where})", "error")
    return err.status if 400 <= err.status < 500 else 503


def _number(form: Mapping[str, str], name: str, kind: type = float, scale: float = 1,
            optional: bool = False) -> Any:
    """A number from a form field (times scale), None when blank and optional."""
    raw = form.get(name, "").strip()
    if not raw and optional:
        return None
    try:
        value = float(raw) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "inf", "nan", "1e400" parse as floats but are no numbers
        raise ApiError(f"{name.replace('_', ' ')} must be a number", code="validation_error",
                       field=name, status=422)
    if kind is int:
        if value != round(value):
            raise ApiError(f"{name.replace('_', ' ')} must be a whole number",
                           code="validation_error", field=name, status=422)
        return round(value)
    return value


def _names(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").split() if w]


def _values(form: Any, *lists: str) -> dict[str, Any]:
    """A submitted form as template values, with the multi-valued fields as lists."""
    values: dict[str, Any] = form.to_dict()
    for name in lists:
        values[name] = form.getlist(name)
    return values


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _usernames(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """User names by the ids other services know people by (their token subjects, see
    User.token_subject), and by the portal's own ids."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = session.execute(sa.select(User.id, User.external_subject, User.username).where(
        sa.or_(User.id.in_(wanted), User.external_subject.in_(wanted))))
    names: dict[str, str] = {}
    for user_id, external, username in rows:
        names[user_id] = username
        if external:
            names[external] = username
    return names


def _find_user(session: Session, name_or_id: str, field: str) -> User:
    name_or_id = name_or_id.strip()
    user = session.scalar(sa.select(User).where(User.username == name_or_id)) \
        or session.get(User, name_or_id)
    if user is None:
        raise ApiError(f"there is no user {name_or_id!r}", code="unknown_user", field=field,
                       status=422)
    return user


@bp.app_template_filter("gib")
def _gib(mib: int) -> str:
    return f"{mib / 1024:g}"


@bp.app_template_filter("hours")
def _hours(minutes: int) -> str:
    return f"{minutes / 60:g}"


# -- overview -----------------------------------------------------------------------------

@bp.get("/")
def index() -> Any:
    """What there is to administer, at a glance, and what this host can give a workload."""
    with db_of().session() as session:
        users = list(session.scalars(sa.select(User)))
        counts = {
            "users": len(users), "admins": sum("admin" in (u.roles or []) for u in users),
            "disabled": sum(not u.active for u in users),
            "applications": catalogues.applications(session),
            "flavors": catalogues.flavors(session), "quotas": len(catalogues.quotas(session)),
        }
    return render_template("admin/index.html", counts=counts,
                           host=catalogues.host_capacity(config_of()))


# -- users --------------------------------------------------------------------------------

def _users_page(status: int = 200, **extra: Any) -> Any:
    with db_of().session() as session:
        users = list(session.scalars(sa.select(User).order_by(User.username)))
    return render_template("admin/users.html", users=users, roles=ROLES,
                           local_accounts=identity_of().manages_passwords,
                           values=extra.pop("values", {"roles": ["researcher"]}),
                           **extra), status


@bp.get("/users")
def users() -> Any:
    return _users_page()


@bp.post("/users")
def create_user() -> Any:
    """Create a local account; a generated password is shown once, on this answer only."""
    values = _values(request.form, "roles")
    if not identity_of().manages_passwords:
        flash("Accounts are managed by the identity provider (accounts_managed_externally)",
              "error")
        return _users_page(409, values=values)
    try:
        body = validated(UserCreate, {
            "username": values.get("username", "").strip(),
            "display_name": values.get("display_name", "").strip(),
            "email": values.get("email", "").strip() or None,
            "roles": values["roles"], "password": values.get("password") or None})
        with db_of().session() as session:
            user, generated = create_account(
                session, body.username, display_name=body.display_name, email=body.email,
                roles=body.roles, password=body.password)
            created = {"id": user.id, "username": user.username}
    except ApiError as err:
        values.pop("password", None)
        return _users_page(_failed(err), values=values)
    flash(f"Account {created['username']} created.", "ok")
    response = make_response(_users_page(201, created=created, initial_password=generated))
    response.headers["Cache-Control"] = "no-store"  # the password must not stay in a cache
    return response


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"there is no user {user_id!r}", field="user_id")
    return user


@bp.get("/users/<user_id>")
def user(user_id: str) -> Any:
    with db_of().session() as session:
        account = _user(session, user_id)
        quota = catalogues.effective_quota(session, "user", account.token_subject)
    return render_template("admin/user.html", account=account, roles=ROLES, quota=quota,
                           limits=LIMITS)


@bp.post("/users/<user_id>/roles")
def set_roles(user_id: str) -> Any:
    """Set a local account's roles; they take effect at the account's next token."""
    roles = sorted(set(request.form.getlist("roles")))
    try:
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ApiError(f"unknown role {unknown[0]!r}", code="validation_error",
                           field="roles", status=422)
        with db_of().session() as session:
            account = _user(session, user_id)
            if account.identity_provider != "local":
                raise ApiError("this account's roles come from the identity provider",
                               code="roles_managed_externally", field="roles", status=409)
            if account.id == current_user.id and "admin" not in roles:
                raise ApiError("you cannot take the admin role from yourself",
                               code="cannot_demote_self", field="roles", status=409)
            account.roles = roles
        flash(f"Roles of {account.username}: {', '.join(roles) or 'none'}.", "ok")
    except ApiError as err:
        if err.status == 404:
            raise
        _failed(err)
    return redirect(url_for("admin.user", user_id=user_id))


@bp.post("/users/<user_id>/active")
def set_active(user_id: str) -> Any:
    """Disable an account (its sessions and tokens end, and the dataset service revokes the
    person, so they may only read public metadata) or enable it again."""
    active = request.form.get("active") == "1"
    try:
        with db_of().session() as session:
            account = _user(session, user_id)
            if account.id == current_user.id and not active:
                raise ApiError("you cannot disable your own account",
                               code="cannot_disable_self", status=409)
            account.active = active
            if not active:
                end_tokens_of(account)
                session.execute(sa.delete(BrowserSession).where(
                    BrowserSession.user_id == account.id))
            subject, username = account.token_subject, account.username
        changed(current_app)
        flash(f"{username} {'enabled' if active else 'disabled'}.", "ok")
        _tell_the_dataset_service(subject, username, active)
    except ApiError as err:
        if err.status == 404:
            raise
        _failed(err)
    return redirect(url_for("admin.user", user_id=user_id))


def _tell_the_dataset_service(subject: str, username: str, active: bool) -> None:
    """Revoke a disabled account's person at the dataset service (traced there), or restore
    an enabled one. Meanwhile the portal's own feed already refuses a disabled account."""
    datasets = clients.datasets()
    try:
        if active:
            datasets.restore_user(subject)
        else:
            datasets.revoke_user(subject, reason="account disabled in the portal")
    except DatasetUnavailable as exc:
        flash(f"The dataset service could not be told ({exc.code}); do it again to record "
              f"it there.", "error")
    except DatasetError as exc:
        if not (active and exc.code == "not_revoked"):
            flash(f"The dataset service refused: {exc.message} ({exc.code})", "error")


# -- projects (the dataset service's) -----------------------------------------------------

def _projects_page(status: int = 200, values: Mapping[str, Any] | None = None) -> Any:
    projects = clients.datasets().projects()
    with db_of().session() as session:
        names = _usernames(session, (p["created_by"] for p in projects))
    return render_template("admin/projects.html", projects=projects, names=names,
                           values=values or {}), status


@bp.get("/projects")
def projects() -> Any:
    return _projects_page()


@bp.post("/projects")
def create_project() -> Any:
    """Create a project in the dataset service; its creator becomes its first steward."""
    values = request.form.to_dict()
    body = {"name": values.get("name", "").strip(), "title": values.get("title", "").strip(),
            "description": values.get("description", "").strip()}
    try:
        created = clients.datasets().create_project(body)
    except DatasetError as err:
        if err.status >= 500:
            raise
        return _projects_page(_failed(err), values)
    flash(f"Project {created['name']} created.", "ok")
    return redirect(url_for("admin.project", name=created["name"]))


@bp.get("/projects/<name>")
def project(name: str) -> Any:
    client = clients.datasets()
    members = client.members(name)
    found = next((p for p in client.projects() if name in (p["name"], p["id"])), None)
    if found is None:
        raise NotFound(f"there is no project {name!r}", field="project")
    with db_of().session() as session:
        names = _usernames(session, [m["user_id"] for m in members] + [found["created_by"]])
    return render_template("admin/project.html", project=found, members=members, names=names,
                           member_roles=MEMBER_ROLES)


@bp.post("/projects/<name>/members")
def put_member(name: str) -> Any:
    """Add a person to a project by user name, or change their role in it."""
    role = request.form.get("role", "")
    try:
        with db_of().session() as session:
            member = _find_user(session, request.form.get("user", ""), "user")
        clients.datasets().put_member(name, member.token_subject, role)
        flash(f"{member.username} is a {role} of {name}.", "ok")
    except (ApiError, DatasetError) as err:
        if err.status == 404 or err.status >= 500:
            raise
        _failed(err)
    return redirect(url_for("admin.project", name=name))


@bp.post("/projects/<name>/members/<user_id>/remove")
def remove_member(name: str, user_id: str) -> Any:
    try:
        clients.datasets().remove_member(name, user_id)
        flash("Member removed.", "ok")
    except DatasetError as err:
        if err.status >= 500:
            raise
        _failed(err)
    return redirect(url_for("admin.project", name=name))


# -- applications -------------------------------------------------------------------------

def _words(form: Mapping[str, str], name: str) -> list[str]:
    try:
        return shlex.split(form.get(name, ""))
    except ValueError as exc:
        raise ApiError(f"{name}: {exc}", code="validation_error", field=name,
                       status=422) from None


def _application_data(form: Mapping[str, str], app_id: str) -> dict[str, Any]:
    return {"id": app_id, "name": form.get("name", "").strip(),
            "description": form.get("description", "").strip(),
            "kind": form.get("kind", ""), "image": form.get("image", "").strip(),
            "image_digest": form.get("image_digest", "").strip() or None,
            "command": _words(form, "command"),
            "local_command": _words(form, "local_command"),
            "enabled": form.get("enabled") == "on"}


def _application_values(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "description": row.description, "kind": row.kind,
            "image": row.image, "image_digest": row.image_digest or "",
            "command": shlex.join(row.command or []),
            "local_command": shlex.join(row.local_command or []),
            "enabled": "on" if row.enabled else ""}


def _applications_page(status: int = 200, values: Mapping[str, Any] | None = None) -> Any:
    with db_of().session() as session:
        rows = catalogues.applications(session)
    return render_template("admin/applications.html", applications=rows,
                           values=values or {"kind": "batch", "enabled": "on"}), status


@bp.get("/applications")
def applications() -> Any:
    return _applications_page()


@bp.post("/applications")
def create_application() -> Any:
    values = request.form.to_dict()
    try:
        body = validated(ApplicationIn, _application_data(values, values.get("id", "").strip()))
        with db_of().session() as session:
            catalogues.create_application(session, body)
    except ApiError as err:
        return _applications_page(_failed(err), values)
    flash(f"Application {body.name} added.", "ok")
    return redirect(url_for("admin.applications"))


@bp.route("/applications/<app_id>", methods=["GET", "POST"])
def application(app_id: str) -> Any:
    """Edit an application; its id stays."""
    with db_of().session() as session:
        row = catalogues.application(session, app_id)
    values: dict[str, Any] = _application_values(row)
    status = 200
    if request.method == "POST":
        values = {**request.form.to_dict(), "id": app_id}
        try:
            data = _application_data(values, app_id)
            with db_of().session() as session:
                catalogues.update_application(session, app_id, data)
        except ApiError as err:
            status = _failed(err)
        else:
            flash(f"Application {app_id} saved.", "ok")
            return redirect(url_for("admin.applications"))
    return render_template("admin/application.html", values=values), status


@bp.post("/applications/<app_id>/enabled")
def enable_application(app_id: str) -> Any:
    enabled = request.form.get("enabled") == "1"
    with db_of().session() as session:
        catalogues.update_application(session, app_id, {"enabled": enabled})
    flash(f"Application {app_id} {'enabled' if enabled else 'disabled'}.", "ok")
    return redirect(url_for("admin.applications"))


# -- flavors ------------------------------------------------------------------------------

def _flavor_data(form: Any, name: str) -> dict[str, Any]:
    return {"name": name, "description": form.get("description", "").strip(),
            "cpus": _number(form, "cpus"),
            "memory_mib": _number(form, "memory_gib", int, 1024),
            "gpus": _number(form, "gpus", int, optional=True) or 0,
            "gpu_model": form.get("gpu_model", "").strip() or None,
            "max_runtime_minutes": _number(form, "max_runtime_hours", int, 60),
            "enabled": form.get("enabled") == "on",
            "allowed_roles": form.getlist("allowed_roles"),
            "allowed_projects": _names(form.get("allowed_projects", ""))}


def _flavor_values(row: Any) -> dict[str, Any]:
    return {"name": row.name, "description": row.description, "cpus": _fmt(row.cpus),
            "memory_gib": _gib(row.memory_mib), "gpus": str(row.gpus),
            "gpu_model": row.gpu_model or "",
            "max_runtime_hours": _hours(row.max_runtime_minutes),
            "enabled": "on" if row.enabled else "",
            "allowed_roles": list(row.allowed_roles or []),
            "allowed_projects": " ".join(row.allowed_projects or [])}


def _flavors_page(status: int = 200, values: Mapping[str, Any] | None = None) -> Any:
    host = catalogues.host_capacity(config_of())
    with db_of().session() as session:
        rows = catalogues.flavors(session)
    return render_template("admin/flavors.html", flavors=rows, host=host, roles=ROLES,
                           values=values or {"enabled": "on", "allowed_roles": []}), status


@bp.get("/flavors")
def flavors() -> Any:
    return _flavors_page()


@bp.post("/flavors")
def create_flavor() -> Any:
    values = _values(request.form, "allowed_roles")
    try:
        body = validated(FlavorIn, _flavor_data(request.form,
                                                request.form.get("name", "").strip()))
        with db_of().session() as session:
            catalogues.create_flavor(session, body)
    except ApiError as err:
        return _flavors_page(_failed(err), values)
    flash(f"Flavor {body.name} added.", "ok")
    return redirect(url_for("admin.flavors"))


@bp.route("/flavors/<name>", methods=["GET", "POST"])
def flavor(name: str) -> Any:
    """Edit a flavor; its name stays (traces of past jobs refer to it)."""
    with db_of().session() as session:
        row = catalogues.flavor(session, name)
    values = _flavor_values(row)
    status = 200
    if request.method == "POST":
        values = {**_values(request.form, "allowed_roles"), "name": name}
        try:
            data = _flavor_data(request.form, name)
            with db_of().session() as session:
                catalogues.update_flavor(session, name, data)
        except ApiError as err:
            status = _failed(err)
        else:
            flash(f"Flavor {name} saved.", "ok")
            return redirect(url_for("admin.flavors"))
    return render_template("admin/flavor.html", values=values, roles=ROLES,
                           host=catalogues.host_capacity(config_of())), status


@bp.post("/flavors/<name>/enabled")
def enable_flavor(name: str) -> Any:
    enabled = request.form.get("enabled") == "1"
    with db_of().session() as session:
        catalogues.update_flavor(session, name, {"enabled": enabled})
    flash(f"Flavor {name} {'enabled' if enabled else 'disabled'}.", "ok")
    return redirect(url_for("admin.flavors"))


# -- quotas -------------------------------------------------------------------------------

def _limits_data(form: Mapping[str, str]) -> dict[str, Any]:
    return {name: _number(form, name, kind, optional=True) for name, _, kind in LIMITS}


def _quotas_page(status: int = 200, values: Mapping[str, Any] | None = None) -> Any:
    with db_of().session() as session:
        rows = catalogues.quotas(session)
        names = _usernames(session, (q.subject for q in rows if q.scope == "user"))
    return render_template("admin/quotas.html", quotas=rows, names=names, limits=LIMITS,
                           values=values or {"scope": "user"}, everyone=EVERYONE), status


@bp.get("/quotas")
def quotas() -> Any:
    return _quotas_page()


@bp.post("/quotas")
def create_quota() -> Any:
    """Set the quota of a user (by user name), a project (by name), or "*" for the default."""
    values = request.form.to_dict()
    try:
        scope = values.get("scope", "")
        subject = values.get("subject", "").strip()
        with db_of().session() as session:
            if scope == "user" and subject != EVERYONE:
                subject = _find_user(session, subject, "subject").token_subject
            body = validated(QuotaIn, {"scope": scope, "subject": subject,
                                       **_limits_data(values)})
            catalogues.create_quota(session, body)
    except ApiError as err:
        return _quotas_page(_failed(err), values)
    flash("Quota set.", "ok")
    return redirect(url_for("admin.quotas"))


@bp.route("/quotas/<quota_id>", methods=["GET", "POST"])
def quota(quota_id: str) -> Any:
    with db_of().session() as session:
        row = catalogues.quota(session, quota_id)
        names = _usernames(session, [row.subject]) if row.scope == "user" else {}
    values = {name: _fmt(getattr(row, name)) for name, _, _ in LIMITS}
    status = 200
    if request.method == "POST":
        values = request.form.to_dict()
        try:
            data = _limits_data(values)
            with db_of().session() as session:
                catalogues.update_quota(session, quota_id, data)
        except ApiError as err:
            status = _failed(err)
        else:
            flash("Quota saved.", "ok")
            return redirect(url_for("admin.quotas"))
    return render_template("admin/quota.html", quota=row, names=names, values=values,
                           limits=LIMITS, everyone=EVERYONE), status


@bp.post("/quotas/<quota_id>/delete")
def delete_quota(quota_id: str) -> Any:
    with db_of().session() as session:
        session.delete(catalogues.quota(session, quota_id))
    flash("Quota removed; the default of its scope applies now.", "ok")
    return redirect(url_for("admin.quotas"))


# -- workloads ----------------------------------------------------------------------------

@bp.get("/workloads")
def workloads() -> Any:
    """Every running desktop and job, whoever owns it, with stop."""
    with db_of().session() as session:
        rows = list(session.scalars(sa.select(Workload).where(
            Workload.state.in_(ACTIVE_STATES)).order_by(Workload.created_at)))
        owners = _usernames(session, [r.owner_id for r in rows])
        shown = [row_out(r) for r in rows]
    return render_template("admin/workloads.html", workloads=shown, owners=owners)


@bp.post("/workloads/<workload_id>/stop")
def stop_workload(workload_id: str) -> Any:
    """Stop anyone's workload; its grant ends with it."""
    try:
        with db_of().session() as session:
            desktops.stop_workload(session, session_principal(), workload_id,
                                   clients.datasets_as_portal())
    except ApiError as err:
        if err.status == 404:
            raise
        _failed(err)
    else:
        flash(f"Workload {workload_id} stopped.", "ok")
    return redirect(url_for("admin.workloads"))
