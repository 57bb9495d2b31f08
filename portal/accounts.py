"""Local accounts: argon2 password hashes, password checks that tell nobody which accounts
exist, password change, accounts created by administrators, and the first administrator.

There is no account lock-out: anyone could lock anyone out with a few wrong passwords.
Sign-in is throttled by client address, and by address and name together, instead
(portal.ratelimit)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from portal.models import ROLES, User
from portal.revocations import end_tokens_of
from vre.errors import ApiError, Conflict

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
USERNAME_PATTERN = r"^[a-z][a-z0-9_.-]{1,63}$"

_hasher = PasswordHasher()
# Compared against when the account does not exist or may not sign in, so that neither the
# answer nor its time tells those apart from a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class SignInError(ApiError):
    """Signing in failed (wrong name or password, refused by the provider); safe to show."""

    def __init__(self, message: str, code: str, status: int = 401) -> None:
        super().__init__(message, code=code, status=status)


def hash_password(password: str) -> str:
    """An argon2id hash with the library's current parameters."""
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether the password matches an argon2 hash, or a werkzeug hash from before argon2."""
    if stored.startswith("$argon2"):
        try:
            return _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    try:
        return check_password_hash(stored, password)
    except ValueError:
        return False


def needs_rehash(stored: str) -> bool:
    """True for hashes from before argon2, or with weaker parameters than today's."""
    return not stored.startswith("$argon2") or _hasher.check_needs_rehash(stored)


def check_password_policy(password: str, username: str, field: str = "new_password") -> None:
    """Refuse passwords that are too short, too long, or the user name itself."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ApiError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters",
                       code="weak_password", field=field, status=422)
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ApiError(f"a password has at most {MAX_PASSWORD_LENGTH} characters",
                       code="weak_password", field=field, status=422)
    if password.lower() == username.lower():
        raise ApiError("the password must not be the user name", code="weak_password",
                       field=field, status=422)


def authenticate(session: Session, username: str, password: str) -> User:
    """The user whose password this is. An unknown name, an account without a password here,
    a disabled account and a wrong password all get the same answer after the same work (one
    argon2 check), so that no answer confirms a name or a disabled account's password.

    A correct password under an old hash is rehashed with argon2 on the way."""
    user = session.scalar(sa.select(User).where(User.username == username,
                                                User.identity_provider == "local"))
    if user is None or user.password_hash is None or not user.active:
        verify_password(_DUMMY_HASH, password)
        raise SignInError("wrong user name or password", "invalid_credentials")
    if not verify_password(user.password_hash, password):
        raise SignInError("wrong user name or password", "invalid_credentials")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def change_password(session: Session, user_id: str, current: str, new: str) -> User:
    """Set a new password after checking the current one; every token the account holds
    from before is refused from now on."""
    user = session.get(User, user_id)
    if user is None or user.password_hash is None:
        raise SignInError("this account has no password here", "no_local_password", status=409)
    check_password_policy(new, user.username)
    try:
        authenticate(session, user.username, current)
    except SignInError as exc:
        if exc.code == "invalid_credentials":
            raise SignInError("the current password is wrong", "wrong_password") from None
        raise
    if verify_password(user.password_hash, new):
        raise ApiError("the new password must differ from the current one",
                       code="weak_password", field="new_password", status=422)
    user.password_hash = hash_password(new)
    end_tokens_of(user)
    return user


def create_account(session: Session, username: str, *, display_name: str = "",
                   email: str | None = None, roles: Iterable[str] = ("researcher",),
                   password: str | None = None) -> tuple[User, str | None]:
    """An administrator creates a local account; returns it and the password if generated."""
    roles = sorted(set(roles))
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ApiError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}",
                       code="validation_error", field="roles", status=422)
    if session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"the user name {username!r} is taken", code="username_taken",
                       field="username")
    generated = password is None
    password = password or secrets.token_urlsafe(15)
    check_password_policy(password, username, field="password")
    user = User(username=username, display_name=display_name or username, email=email,
                password_hash=hash_password(password), roles=roles)
    session.add(user)
    session.flush()
    return user, password if generated else None


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
