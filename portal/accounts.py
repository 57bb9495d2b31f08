"""Local accounts: password checks with lock-out, and the first administrator."""

from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from portal.models import User
from vre.db import utcnow

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
# Compared against when the user does not exist, so timing does not reveal which names exist.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


class SignInError(Exception):
    """Wrong name or password, or an account locked or disabled; message is safe to show."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def authenticate(session: Session, username: str, password: str) -> User:
    """The user whose password this is; counts failures and locks the account after several."""
    user = session.scalar(sa.select(User).where(User.username == username))
    if user is None or user.password_hash is None:
        check_password_hash(_DUMMY_HASH, password)
        raise SignInError("wrong user name or password", "invalid_credentials")
    now = utcnow()
    locked_until = user.locked_until
    if locked_until is not None and locked_until.tzinfo is None:
        locked_until = locked_until.replace(tzinfo=now.tzinfo)
    if locked_until is not None and locked_until > now:
        raise SignInError("account locked after repeated failures; try again later",
                          "account_locked")
    if not check_password_hash(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
        raise SignInError("wrong user name or password", "invalid_credentials")
    if not user.active:
        raise SignInError("account disabled", "account_disabled")
    user.failed_logins = 0
    user.locked_until = None
    return user


def ensure_admin(session: Session, username: str, password: str | None) -> str | None:
    """Create the first administrator if there is none; return the new password if generated."""
    exists = session.scalar(sa.select(sa.func.count()).select_from(User).where(
        User.username == username))
    if exists:
        return None
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    session.add(User(username=username, display_name="Administrator",
                     password_hash=hash_password(password),
                     roles=["admin", "steward", "researcher", "auditor"]))
    return password if generated else None
