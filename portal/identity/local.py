"""Local accounts: the portal's own password form, and tokens minted by the portal's issuer
(the one-machine default)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

from flask import current_app, session

from portal.accounts import SignInError, authenticate
from portal.identity import Identity, SignedIn
from portal.models import User
from vre.tokens import TokenIssuer
from vre.web import db_of

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
