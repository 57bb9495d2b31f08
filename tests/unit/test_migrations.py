"""Each service's migrations build exactly the tables its models declare."""

from __future__ import annotations

import importlib

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from vre.config import Config
from vre.db import Database, include_name
from vre.services import SERVICES


@pytest.mark.parametrize("name", [s.name for s in SERVICES])
def test_migrations_match_the_models(config: Config, name: str) -> None:
    svc = next(s for s in SERVICES if s.name == name)
    db = Database.for_service(config, svc.name, svc.migrations)
    try:
        db.migrate(config, svc.name)
        assert db.readiness() == (True, "ok")
        metadata = importlib.import_module(f"{svc.package}.models").Base.metadata
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"include_name": include_name}), metadata)
        assert diff == [], f"{name}: models and migrations differ: {diff}"
    finally:
        db.engine.dispose()


def test_a_reading_session_runs_outside_a_transaction(config: Config) -> None:
    """Each statement of a reading session sees what was committed when it ran; a unit of
    work keeps one snapshot (PostgreSQL's now() is its transaction's start)."""
    svc = next(s for s in SERVICES if s.name == "dataset_service")
    db = Database.for_service(config, svc.name, svc.migrations)
    try:
        db.migrate(config, svc.name)
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite has no transaction timestamps to tell them apart")
        started = "SELECT now() = statement_timestamp()"
        with db.reading() as session:
            session.execute(sa.text("SELECT pg_sleep(0.01)"))
            assert session.scalar(sa.text(started)) is True, "each statement on its own"
        with db.session() as session:
            session.execute(sa.text("SELECT pg_sleep(0.01)"))
            assert session.scalar(sa.text(started)) is False, "one transaction throughout"
    finally:
        db.engine.dispose()
