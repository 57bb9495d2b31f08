"""Shared fixtures: a configuration per test on SQLite and on the real PostgreSQL, service
apps migrated on it, and tokens signed by a test issuer."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask

from launcher.serve import app_factory
from tracer.checkpoints import CheckpointSigner
from vre.config import Config, load_config
from vre.db import Database, drop_schemas
from vre.services import service
from vre.tokens import TokenIssuer, generate_signing_key

pytest_plugins = ["tests.dataset_helpers", "tests.portal_helpers"]

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ISSUER = "http://issuer.test"
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def issuer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test issuer's signing key and its JWKS, published as a file."""
    keys = tmp_path_factory.mktemp("keys")
    generate_signing_key(keys / "signing.pem")
    issuer = TokenIssuer.from_file(keys / "signing.pem", ISSUER, "vre", 300)
    (keys / "jwks.json").write_text(json.dumps(issuer.jwks()))
    CheckpointSigner.generate(keys / "tracer.pem")
    return keys


@pytest.fixture(scope="session")
def issuer(issuer_dir: Path) -> TokenIssuer:
    """The token issuer the services under test trust."""
    return TokenIssuer.from_file(issuer_dir / "signing.pem", ISSUER, "vre", 300)


@pytest.fixture(scope="session")
def rogue_issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    """Same issuer name and key id scheme, different key: its tokens must be refused."""
    keys = tmp_path_factory.mktemp("rogue")
    generate_signing_key(keys / "signing.pem")
    return TokenIssuer.from_file(keys / "signing.pem", ISSUER, "vre", 300)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Where the suite runs on several workers (scripts/test.sh), each module's tests run on
    one worker, so that a module's fixtures are made once, and every page test on one, so
    that one platform serves them all."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/browser" if module.startswith("tests/browser/") else module

    return ByModule(config, log)


def _postgres_available() -> None:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed at {POSTGRES_URL} (set TEST_POSTGRES_URL): {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def config(tmp_path: Path, backend: str, issuer_dir: Path) -> Iterator[Config]:
    """A fresh configuration: its own data directory and its own empty database."""
    jwks = issuer_dir / "jwks.json"
    values: dict[str, Any] = {
        "home": tmp_path / "home", "token_issuer": ISSUER, "jwks_url": jwks.as_uri(),
        "secret_key": "s" * 48, "service_secret": "t" * 48, "demo_data": False,
        "signing_key_file": jwks.parent / "signing.pem", "log_level": "WARNING",
        "tracer_key_file": jwks.parent / "tracer.pem",
        # Each service reads its own revocations; tests of the feeds between services name
        # them (tests/revocation_helpers.py).
        "revocation_feeds": "",
    }
    prefix = ""
    if backend == "postgresql":
        _postgres_available()
        prefix = f"t{uuid.uuid4().hex[:10]}_"
        values.update(database_url=POSTGRES_URL, database_schema_prefix=prefix)
    yield load_config(env={}, **values)
    if prefix:
        drop_schemas(POSTGRES_URL, prefix)


@pytest.fixture
def make_app(config: Config) -> Iterator[Callable[[str], Flask]]:
    """Create a service's app on the test configuration, with its migrations applied."""
    created: list[Flask] = []

    def make(name: str) -> Flask:
        svc = service(name)
        app = app_factory(svc)(config)
        app.extensions["vre.db"].migrate(config, name)
        app.testing = True
        created.append(app)
        return app

    yield make
    for app in created:
        if "vre.outbox" in app.extensions:
            app.extensions["vre.outbox"].stop()
        app.extensions["vre.db"].engine.dispose()


@pytest.fixture
def token(issuer: TokenIssuer) -> Callable[..., str]:
    """Sign a token for a subject with roles: token("alice", "researcher")."""

    def make(subject: str = "user-1", *roles: str, **extra: Any) -> str:
        return issuer.issue(subject, list(roles), **extra)[0]

    return make


@pytest.fixture
def dataset_db(config: Config) -> Iterator[Database]:
    """The dataset service's database, migrated to head, empty."""
    database = Database.for_service(config, "dataset_service", "dataset_service:migrations")
    database.migrate(config, "dataset_service")
    yield database
    database.engine.dispose()
