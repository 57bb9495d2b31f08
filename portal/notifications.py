"""Notifications: a message for one person about something that changed, kept in the portal
for them to read and, where a mail server is configured, sent to their e-mail address once
the change it tells of is committed (never before: a rolled-back change tells nobody)."""

from __future__ import annotations

import logging
import smtplib
import threading
from dataclasses import dataclass
from email.message import EmailMessage

import sqlalchemy as sa
from flask import current_app, has_app_context
from sqlalchemy.orm import Session

from portal.models import Notification, User
from vre.config import Config
from vre.db import after_commit, on_rollback, utcnow

log = logging.getLogger(__name__)

# Mails waiting on the session for its commit.
_PENDING = "vre.notification_mails"
MAIL_SECONDS = 10


@dataclass(frozen=True)
class Mail:
    """One notification as an e-mail: where to, what, and the page it links to."""

    to: str
    text: str
    link: str


def notify(session: Session, user_id: str, text: str, link: str = "") -> None:
    """Tell a person (by user id or their identity provider's subject) something; e-mailed
    after the session commits when the platform has a mail server and they an address."""
    session.add(Notification(user_id=user_id, text=text[:500], link=link[:500],
                             created_at=utcnow()))
    config = _config()
    if config is None or not config.smtp_host:
        return
    address = session.scalar(sa.select(User.email).where(
        sa.or_(User.id == user_id, User.external_subject == user_id)).limit(1))
    if address:
        _pending(session).append(Mail(address, text[:500], link))


def unread(session: Session, subjects: list[str]) -> int:
    """How many notifications of the person (under any of their ids) are unread."""
    return session.scalar(sa.select(sa.func.count()).select_from(Notification).where(
        Notification.user_id.in_(subjects), Notification.read_at.is_(None))) or 0


def _config() -> Config | None:
    if not has_app_context():
        return None
    return current_app.extensions.get("vre.config")


def _pending(session: Session) -> list[Mail]:
    """The mails the session's transaction will send once it commits: one thread for all."""
    if _PENDING not in session.info:
        mails: list[Mail] = []
        session.info[_PENDING] = mails
        config = _config()
        assert config is not None

        def sent() -> None:
            session.info.pop(_PENDING, None)
            threading.Thread(target=send, args=(config, config.url_of("portal"), mails),
                             daemon=True, name="notification-mail").start()

        after_commit(session, sent)
        on_rollback(session, lambda: session.info.pop(_PENDING, None))
    return session.info[_PENDING]


def message_of(mail: Mail, sender: str, base: str) -> EmailMessage:
    """A notification as the e-mail that carries it."""
    message = EmailMessage()
    message["From"], message["To"] = sender, mail.to
    message["Subject"] = mail.text[:120]
    body = mail.text + (f"\n\n{base.rstrip('/')}{mail.link}\n" if mail.link else "\n")
    message.set_content(body)
    return message


def send(config: Config, base: str, mails: list[Mail]) -> None:
    """Send the mails through the configured server; a failure is logged, never raised (the
    notification is in the portal all the same)."""
    try:
        with smtplib.SMTP(config.smtp_host or "", config.smtp_port,
                          timeout=MAIL_SECONDS) as server:
            for mail in mails:
                server.send_message(message_of(mail, config.smtp_from, base))
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("notification e-mails not sent (%d): %s", len(mails), exc)
