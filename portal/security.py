"""Browser-facing protections: CSRF tokens on every form, the JSON API's checks on every value
a form or query string sends, strict security headers."""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, Response, current_app, request, session

from vre.api import check_form
from vre.errors import ApiError

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
       "object-src 'none'")


def content_security_policy(identity_origin: str | None = None) -> str:
    """The policy; with an OpenID provider, forms may also lead there (sign-out redirects to
    its logout page, and browsers hold a form's redirects to form-action)."""
    if not identity_origin:
        return CSP
    return CSP.replace("form-action 'self'", f"form-action 'self' {identity_origin}")


def policy_connecting_to(origin: str) -> str:
    """The app's policy, letting scripts also connect to one more origin (a desktop viewer's
    VNC proxy) and to nothing else."""
    return current_app.extensions["portal.csp"].replace(
        "connect-src 'self'", f"connect-src 'self' {origin}")


def csrf_token() -> str:
    """The session's CSRF token, created on first use; templates put it in every form."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def install(app: Flask, identity_origin: str | None = None) -> None:
    """Check CSRF on state-changing form posts, the values every page receives, and set
    security headers on every page."""
    policy = content_security_policy(identity_origin)
    app.extensions["portal.csp"] = policy

    @app.before_request
    def _check_csrf() -> None:
        if request.method in ("GET", "HEAD", "OPTIONS") or request.path.startswith("/api/"):
            return
        if request.routing_exception is not None:
            return  # let routing answer 404/405 first
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token", "")
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise ApiError("the form is stale or was not sent by this site; reload and retry",
                           code="csrf_failed", status=400)

    @app.before_request
    def _check_form() -> None:
        # What a page receives is held to the JSON API's rules, before any handler runs, so
        # that no form leaves a half-done change or fails in the database (see check_form).
        if request.path.startswith("/api/") or request.routing_exception is not None:
            return
        check_form(request.args.items(multi=True), "query")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            check_form(request.form.items(multi=True))

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    app.jinja_env.globals["csrf_token"] = csrf_token
