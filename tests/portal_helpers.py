"""Helpers for portal page tests: a portal built on a test configuration, a browser signed in
as someone (without the sign-in form), form posts that carry the CSRF token, the people of a
test portal with their roles, and the whole site (portal, dataset service, tracer, chain)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import portal.app
from portal.models import User
from portal.revocations import SESSION_HANDLE, open_browser_session
from tests.dataset_helpers import create
from tests.helpers import free_port, serving
from tests.ledger_helpers import EVERY_STEP, tracer_database
from tracer.anchoring import Anchorer
from tracer.chain_jsonrpc import JsonRpcChainClient
from tracer.checkpoints import CheckpointSigner
from tracer.devnode import ANVIL_DEV_PRIVATE_KEY, running_anvil
from vre.config import Config

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
    handle = None
    if user_id is not None:  # the session's server-side record, as signing in makes it
        with portal.extensions["vre.db"].session() as db:
            user = db.get(User, user_id)
            handle = open_browser_session(db, user, timedelta(hours=1)) if user else None
    with client.session_transaction() as session:
        if user_id is not None:
            session["_user_id"] = user_id
            session["_fresh"] = True
            session[SESSION_HANDLE] = handle
        session["csrf"] = CSRF
    return client


def post(client: FlaskClient, path: str, data: dict[str, Any] | None = None,
         **form: Any) -> TestResponse:
    """Post a form as the site's own pages do, CSRF token included."""
    return client.post(path, data={"csrf_token": CSRF, **(data or {}), **form})


def make_portal(config: Config, people: dict[str, list[str]] = PEOPLE) -> Flask:
    """A migrated portal on the configuration, with one person per role."""
    app = portal.app.create_app(config)
    app.extensions["vre.db"].migrate(config, "portal")
    app.testing = True
    add_people(app, people)
    return app


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    """One chain node per test module; each site deploys its own anchor contract on it."""
    with running_anvil(free_port()) as url:
        yield url


@pytest.fixture
def site(platform: Any, config: Config, anvil_url: str) -> Iterator[dict[str, Any]]:
    """The portal wired to the served dataset service (project "lung" with ingested demo
    studies: steward-1 stewards it, res-1 researches in it) and tracer, a fresh anchor
    contract, and an anchoring worker the test steps by hand."""
    dataset_app, auditor = platform
    contract = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEY).deploy()
    with serving(dataset_app) as dataset_url:
        site_config = config.model_copy(update={
            "dataset_url": dataset_url, "tracer_url": auditor.base_url,
            "chain_url": anvil_url, "chain_contract": contract})
        app = make_portal(site_config)
        tracer_db = tracer_database(config)
        anchorer = Anchorer(tracer_db, JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEY,
                                                          contract), contract,
                            CheckpointSigner.from_file(config.tracer_key_path),
                            config.ledger_origin, EVERY_STEP)
        yield {"portal": app, "datasets": dataset_app, "anchorer": anchorer}
        tracer_db.engine.dispose()
        app.extensions["vre.db"].engine.dispose()


def published(site: dict[str, Any], steward: dict[str, str], **changes: Any) -> dict:
    """A dataset of the site's demo studies, released and published through the portal."""
    dataset = create(site["datasets"], steward, **changes)
    client = signed_in(site["portal"], "steward-1")
    for action in ("release", "publish"):
        assert post(client, f"/datasets/{dataset['id']}/{action}").status_code == 302
    return dataset
