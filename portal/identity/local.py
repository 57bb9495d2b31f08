"""Local accounts: the portal's own password form, and tokens minted by the portal's issuer
(the one-machine default)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import ClassVar

from flask import Flask, current_app, session

from portal.accounts import SignInError, authenticate
from portal.identity import Identity, SignedIn
from portal.models import User
from vre.tokens import TokenIssuer
from vre.web import db_of

SERVICE_SUBJECT = "service:portal"
TOKEN_KEY = "vre_access_token"
CLIENT = "vre-portal"
RENEW_BEFORE_SECONDS = 60  # a token this close to expiry is replaced, not handed out


class LocalIdentity(Identity):
    """Passwords checked here (argon2, lock-out); tokens signed by the portal itself."""

    manages_passwords: ClassVar[bool] = True

    def begin_sign_in(self, next_url: str) -> str | None:
        return None

    def complete_sign_in(self, params: Mapping[str, str]) -> SignedIn:
        username = params.get("username", "").strip()
        password = params.get("password", "")
        failure: SignInError | None = None
        with db_of().session() as db:
            try:
                user = authenticate(db, username, password)
            except SignInError as exc:
                failure = exc  # leave the block normally so the failure count is committed
        if failure is not None:
            raise failure
        return SignedIn(user=user)

    def sign_out(self, user: User) -> str | None:
        session.pop(TOKEN_KEY, None)
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
        token, ttl = issuer.issue(user.id, list(user.roles), client=CLIENT,
                                  preferred_username=user.username)
        session[TOKEN_KEY] = {"token": token, "exp": int(time.time()) + ttl, "sub": user.id}

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
