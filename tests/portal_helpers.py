"""Helpers for portal page tests: a browser signed in as someone (without the sign-in form),
form posts that carry the CSRF token, and the people of a test portal with their roles."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from portal.models import User

CSRF = "test-csrf"

# One person per role the authorisation tests look at.
PEOPLE = {"admin-1": ["admin"], "steward-1": ["steward", "researcher"],
          "res-1": ["researcher"], "someone": ["researcher"]}
AS_ROLE = {"researcher": "res-1", "steward": "steward-1", "admin": "admin-1"}


def add_people(portal: Flask, people: dict[str, list[str]] = PEOPLE) -> None:
    """Accounts with fixed ids (the user id is also the user name)."""
    with portal.extensions["vre.db"].session() as session:
        for user_id, roles in people.items():
            session.add(User(id=user_id, username=user_id, display_name=user_id, roles=roles))


def signed_in(portal: Flask, user_id: str | None) -> FlaskClient:
    """A browser whose session is signed in as the user (anonymous for None), with a CSRF token."""
    client = portal.test_client()
    with client.session_transaction() as session:
        if user_id is not None:
            session["_user_id"] = user_id
            session["_fresh"] = True
        session["csrf"] = CSRF
    return client


def post(client: FlaskClient, path: str, data: dict[str, Any] | None = None,
         **form: Any) -> TestResponse:
    """Post a form as the site's own pages do, CSRF token included."""
    return client.post(path, data={"csrf_token": CSRF, **(data or {}), **form})
