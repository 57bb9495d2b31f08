"""What the portal revokes, and its feed of it: disabled accounts and the moment before which
an account's tokens are refused, revoked tokens (by jti) and stopped workloads (by wid); and
the browser sessions kept server-side, so that signing out ends a cookie for good."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from portal.models import BrowserSession, RevokedToken, RevokedWorkload, User
from vre.db import Database, utcnow
from vre.revocation import Loader, Revocations, SubjectState, revocations_of


def own_revocations(db: Database) -> Loader:
    """The portal's own records as a revocation snapshot (what its feed answers)."""

    def load() -> Revocations:
        now = utcnow()
        with db.reading() as session:
            accounts = session.execute(
                sa.select(
                    User.id, User.external_subject, User.active, User.tokens_not_before
                ).where(sa.or_(User.active.is_(False), User.tokens_not_before.is_not(None)))
            )
            subjects = {
                external or user_id: SubjectState(
                    not_before.timestamp() if not_before else None, not active
                )
                for user_id, external, active, not_before in accounts
            }
            tokens = frozenset(
                session.scalars(sa.select(RevokedToken.jti).where(RevokedToken.expires_at > now))
            )
            workloads = frozenset(
                session.scalars(
                    sa.select(RevokedWorkload.workload_id).where(RevokedWorkload.until > now)
                )
            )
        return Revocations(subjects=subjects, tokens=tokens, workloads=workloads)

    return load


def changed(app: Flask) -> None:
    """A revocation was just committed here: this process decides with it at once."""
    state = revocations_of(app)
    if state is not None:
        state.invalidate()


def end_tokens_of(user: User) -> None:
    """Refuse every token the account holds now (its password changed, it was disabled)."""
    user.tokens_not_before = utcnow()


def revoke_token(session: Session, jti: str, expires_at: datetime) -> None:
    """Refuse the token with this id until it would have expired anyway."""
    session.execute(sa.delete(RevokedToken).where(RevokedToken.expires_at <= utcnow()))
    if session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, expires_at=expires_at))


def revoke_workload(session: Session, workload_id: str, until: datetime) -> RevokedWorkload:
    """Refuse every token issued to the workload (its `wid` claim) until `until`: a desktop
    or job that stops revokes its tokens so, `until` being when the last of them expires."""
    session.execute(sa.delete(RevokedWorkload).where(RevokedWorkload.until <= utcnow()))
    row = session.get(RevokedWorkload, workload_id)
    if row is None:
        row = RevokedWorkload(workload_id=workload_id, until=until)
        session.add(row)
    else:
        row.until = max(row.until, until)
    session.flush()
    return row


# The key of the browser session's handle in the (signed) session cookie.
SESSION_HANDLE = "vre_sid"


def _handle_hash(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()


def open_browser_session(session: Session, user: User, lifetime: timedelta) -> str:
    """Record a signed-in browser session; the handle is what its cookie carries."""
    handle = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(sa.delete(BrowserSession).where(BrowserSession.expires_at <= now))
    session.add(BrowserSession(id=_handle_hash(handle), user_id=user.id, expires_at=now + lifetime))
    return handle


def browser_session_holds(session: Session, handle: str | None, user_id: str) -> bool:
    """Whether the cookie's handle names a live session of this user."""
    if not handle:
        return False
    row = session.get(BrowserSession, _handle_hash(handle))
    return row is not None and row.user_id == user_id and row.expires_at > utcnow()


def close_browser_session(session: Session, handle: str | None) -> None:
    """End the browser session: its cookie signs in nobody from now on."""
    if handle:
        session.execute(sa.delete(BrowserSession).where(BrowserSession.id == _handle_hash(handle)))
