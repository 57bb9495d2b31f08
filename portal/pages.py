"""The portal's pages: home, sign-in and sign-out with local accounts."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from portal.accounts import SignInError, authenticate
from vre.web import db_of

bp = Blueprint("pages", __name__)


def _safe_next(target: str | None) -> str:
    # Only same-site relative paths: an open redirect would help phishing.
    if target and target.startswith("/") and not target.startswith("//") \
            and not urlsplit(target).netloc:
        return target
    return url_for("pages.home")


@bp.get("/")
def home() -> Any:
    return render_template("home.html")


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> Any:
    error = None
    status = 200
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        with db_of().session() as db:
            try:
                user = authenticate(db, username, password)
            except SignInError as exc:
                error, status = str(exc), 401
            else:
                session.clear()  # a fresh session on sign-in (no fixation)
                login_user(user)
                return redirect(_safe_next(request.args.get("next")))
    return render_template("signin.html", error=error), status


@bp.post("/signout")
def signout() -> Any:
    logout_user()
    session.clear()
    return redirect(url_for("pages.home"))


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"user": current_user}
