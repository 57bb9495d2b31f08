"""The portal's pages: home, sign-in (form or provider), sign-out and password change."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal import clients
from portal.accounts import SignInError, change_password
from portal.identity import SignedIn, identity_of
from portal.ratelimit import limiter_of
from portal.revocations import SESSION_HANDLE, close_browser_session, open_browser_session
from portal.revocations import changed as revocations_changed
from vre.client import ServiceError
from vre.errors import ApiError
from vre.web import db_of

bp = Blueprint("pages", __name__)


def _safe_next(target: str | None) -> str:
    # Only same-site relative paths: an open redirect would help phishing.
    if target and target.startswith("/") and not target.startswith("//") \
            and "\\" not in target and not urlsplit(target).netloc:
        return target
    return url_for("pages.home")


def _start_session(result: SignedIn, next_url: str | None) -> Any:
    session.clear()  # a fresh session on sign-in (no fixation)
    session.update(result.session)
    with db_of().session() as db:
        session[SESSION_HANDLE] = open_browser_session(
            db, result.user, current_app.permanent_session_lifetime)
    login_user(result.user)
    return redirect(_safe_next(result.next_url or next_url))


@bp.get("/")
def home() -> Any:
    return render_template("home.html")


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> Any:
    """The password form for local accounts; a redirect to the provider otherwise."""
    identity = identity_of()
    next_url = _safe_next(request.args.get("next"))
    if not identity.manages_passwords:
        return redirect(identity.begin_sign_in(next_url) or url_for("pages.home"))
    error = None
    status = 200
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        limiter_of(current_app).check(request.remote_addr, username)
        try:
            result = identity.complete_sign_in(request.form)
        except SignInError as exc:
            error, status = exc.message, exc.status
        else:
            return _start_session(result, next_url)
    return render_template("signin.html", error=error), status


@bp.get("/signin/callback")
def signin_callback() -> Any:
    """Where the provider sends the browser back with an authorization code."""
    identity = identity_of()
    if identity.manages_passwords:
        raise ApiError("sign-in here uses the password form", code="not_found", status=404)
    limiter_of(current_app).check(request.remote_addr, None)
    result = identity.complete_sign_in(request.args)
    try:
        # Under the person's token subject, as every service knows them (User.token_subject).
        clients.sync_memberships(result.user.token_subject, list(result.user.groups or []))
    except ServiceError as exc:  # signing in must not depend on the dataset service
        current_app.logger.warning("project memberships not synced for %s: %s",
                                   result.user.id, exc)
    return _start_session(result, None)


@bp.post("/signout")
def signout() -> Any:
    """End the portal session, then the provider's when there is one."""
    target = None
    if current_user.is_authenticated:
        target = identity_of().sign_out(current_user)
    with db_of().session() as db:
        close_browser_session(db, session.get(SESSION_HANDLE))
    logout_user()
    session.clear()
    return redirect(target or url_for("pages.home"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def account_password() -> Any:
    """Change one's own password (local accounts); needs the current one."""
    if not identity_of().manages_passwords:
        return render_template("password.html", managed_elsewhere=True), 200
    error = None
    status = 200
    done = False
    if request.method == "POST":
        limiter_of(current_app).check(request.remote_addr, current_user.username)
        new = request.form.get("new_password", "")
        if new != request.form.get("confirm_password", ""):
            error, status = "the two new passwords differ", 422
        else:
            try:
                with db_of().session() as db:
                    user = change_password(db, current_user.id,
                                           request.form.get("current_password", ""), new)
            except ApiError as exc:
                error, status = exc.message, exc.status
            else:
                # This session goes on with the new password and a new token; others end,
                # and so do the tokens issued before.
                revocations_changed(current_app)
                login_user(user)
                identity_of().refresh(user)
                done = True
    return render_template("password.html", error=error, done=done,
                           managed_elsewhere=False), status


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"user": current_user}
