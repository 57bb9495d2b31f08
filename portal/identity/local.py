"""Local accounts: the portal's own password form, and tokens minted by the portal's issuer
(the one-machine default)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import ClassVar

from flask import Flask, current_app, session

from portal.accounts import authenticate
from portal.identity import Identity, SignedIn
from portal.models import User
from portal.revocations import changed, revoke_token
from vre.tokens import TokenIssuer
from vre.web import db_of

SERVICE_SUBJECT = "service:portal"
TOKEN_KEY = "vre_access_token"
CLIENT = "vre-portal"
RENEW_BEFORE_SECONDS = 60  # a token this close to expiry is replaced, not handed out


class LocalIdentity(Identity):
    """Passwords checked here (argon2, throttled sign-in); tokens signed by the portal."""

    manages_passwords: ClassVar[bool] = True

    def begin_sign_in(self, next_url: str) -> str | None:
        return None

    def complete_sign_in(self, params: Mapping[str, str]) -> SignedIn:
        username = params.get("username", "").strip()
        password = params.get("password", "")
        with db_of().session() as db:
            user = authenticate(db, username, password)
        return SignedIn(user=user)

    def sign_out(self, user: User) -> str | None:
        cached = session.pop(TOKEN_KEY, None)
        if cached and cached.get("jti"):  # the session's token ends with it
            with db_of().session() as db:
                revoke_token(db, cached["jti"], datetime.fromtimestamp(cached["exp"], UTC))
            changed(current_app)
        return None

    def access_token(self, user: User) -> str:
        cached = session.get(TOKEN_KEY)
        if cached and cached.get("sub") == user.id \
                and cached.get("exp", 0) - RENEW_BEFORE_SECONDS > time.time():
            return cached["token"]
        self.refresh(user)
        return session[TOKEN_KEY]["token"]

    def refresh(self, user: User) -> None:
        issuer: TokenIssuer = current_app.extensions["vre.issuer"]
        jti = uuid.uuid4().hex
        token, ttl = issuer.issue(user.id, list(user.roles), client=CLIENT,
                                  preferred_username=user.username, jti=jti)
        session[TOKEN_KEY] = {"token": token, "exp": int(time.time()) + ttl, "sub": user.id,
                              "jti": jti}

    def service_tokens(self, app: Flask) -> SelfIssuedToken:
        return SelfIssuedToken(app.extensions["vre.issuer"])


class SelfIssuedToken:
    """The portal's own service token, signed by its issuer and renewed before it expires."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self._issuer = issuer
        self._token = ""
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if time.monotonic() >= self._renew_at:
                self._token, ttl = self._issuer.issue(SERVICE_SUBJECT, ["service"],
                                                      client="portal")
                self._renew_at = time.monotonic() + 0.8 * ttl
            return self._token
