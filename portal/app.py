"""The portal's app factory: sign-in, public catalogue, desktops and jobs; the token issuer
on one machine."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Request, render_template
from flask import session as browser
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_login import LoginManager
from itsdangerous import URLSafeTimedSerializer

from portal import (
    api,
    api_admin,
    api_desktops,
    api_exports,
    api_jobs,
    clients,
    fragments,
    pagecache,
    pages,
    pages_admin,
    pages_catalogue,
    pages_datasets,
    pages_desktops,
    pages_exports,
    pages_jobs,
    security,
)
from portal.identity import install_identity
from portal.models import User, trace_outbox
from portal.ratelimit import SignInLimiter, install_limiter
from portal.revocations import SESSION_HANDLE, browser_session_holds, own_revocations
from vre import revocation_feed
from vre.config import Config, ConfigError, load_config
from vre.errors import ApiError
from vre.outbox import install_outbox
from vre.services import service
from vre.tokens import TokenIssuer
from vre.web import create_service_app, db_of

SERVICE = service("portal")


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signer built once for each key instead of for
    each request, and not at all for a request that carries no session cookie (every API
    call, which a bearer token authenticates)."""

    _signer: tuple[tuple[Any, ...], URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, *(app.config["SECRET_KEY_FALLBACKS"] or ()))
        signer = self._signer
        if signer is None or signer[0] != keys:
            signer = self._signer = (keys, super().get_signing_serializer(app))
        return signer[1]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and ("HTTP_COOKIE" not in request.environ
                               or not request.cookies.get(self.get_cookie_name(app))):
            return self.session_class()
        return super().open_session(app, request)


def _error_page(err: ApiError) -> Any:
    return render_template("error.html", error=err), err.status


def create_app(config: Config | None = None) -> Flask:
    """Build the portal from its configuration (from the environment when not given)."""
    config = config or load_config()
    config.require(*SERVICE.requires)
    key_path = config.signing_key_path
    if not key_path.is_file():
        raise ConfigError("VRE_SIGNING_KEY_FILE", f"token signing key not found at {key_path}")
    app = create_service_app(SERVICE.name, config, SERVICE.migrations, title=SERVICE.title,
                             html_errors=_error_page, import_name=__package__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.url_of("portal").startswith("https://"),
        SESSION_COOKIE_NAME="vre_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=config.url_of("portal").startswith("https://"),
    )
    app.session_interface = CookieSessions()
    app.extensions["vre.issuer"] = TokenIssuer.from_file(
        key_path, config.portal_issuer, config.token_audience, config.token_ttl_seconds)
    logins = LoginManager(app)
    logins.login_view = "pages.signin"

    @logins.user_loader
    def _load(remembered: str) -> User | None:
        with db_of(app).session() as session:
            user = session.get(User, remembered.split(".", 1)[0])
            # A disabled account's open sessions end at their next request, and so do those
            # signed in with a password that has been changed since, and those signed out
            # (whose record is gone, whatever the cookie still says).
            if user is None or not user.active or \
                    not hmac.compare_digest(user.get_id(), remembered) or \
                    not browser_session_holds(session, browser.get(SESSION_HANDLE), user.id):
                return None
            return user

    install_identity(app, config)
    install_limiter(app, SignInLimiter(
        config.signin_limit_per_address, config.signin_limit_per_user))
    provider = config.oidc_server_url if config.identity == "oidc" else None
    security.install(app, urlsplit(provider)._replace(path="", query="").geturl()
                     if provider else None)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    clients.install(app)
    revocation_feed.install(app, own_revocations(db_of(app)),
                            app.extensions["portal.service_token"])
    fragments.install(app)
    pagecache.install(app, config.page_cache_seconds)
    app.register_blueprint(pages_catalogue.bp)
    app.register_blueprint(pages_datasets.bp)
    app.register_blueprint(api_admin.bp)
    app.register_blueprint(api_desktops.bp)
    app.register_blueprint(api_jobs.bp)
    app.register_blueprint(api_exports.bp)
    app.register_blueprint(pages_admin.bp)
    app.register_blueprint(pages_desktops.bp)
    app.register_blueprint(pages_jobs.bp)
    app.register_blueprint(pages_exports.bp)
    install_outbox(app, trace_outbox, lambda traces, timeout: clients.tracer(app)
                   .record_many(traces, timeout=timeout))
    return app
