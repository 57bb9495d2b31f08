"""The dataset service's app factory: the only authority over imaging data (ingestion,
datasets, FAIR metadata, search, access grants)."""

from __future__ import annotations

import contextlib
import tomllib
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from flask import Flask

from dataset_service import api, api_catalogue, api_datasets, api_explore, api_ingest
from dataset_service.dicom import DeidPolicy
from dataset_service.dropfolders import check_import_root
from dataset_service.ingest import Ingestor
from dataset_service.models import RevokedUser, trace_outbox
from dataset_service.repository import Repository
from tracer.client import TracerClient, checked_trace
from vre import revocation, revocation_feed
from vre.config import Config, ConfigError, load_config
from vre.db import Database
from vre.outbox import install_outbox, outbox_of
from vre.service_auth import IssuedToken
from vre.services import service
from vre.web import create_service_app

SERVICE = service("dataset_service")


def create_app(config: Config | None = None) -> Flask:
    """Build the dataset service from its configuration (from the environment when not given)."""
    config = config or load_config()
    config.require(*SERVICE.requires)
    app = create_service_app(
        SERVICE.name, config, SERVICE.migrations, title=SERVICE.title, import_name=__package__
    )
    _install_ingestion(app, config)
    app.register_blueprint(api.bp)
    app.register_blueprint(api_ingest.bp)
    app.register_blueprint(api_datasets.bp)
    app.register_blueprint(api_explore.bp)
    api_catalogue.install(app, config)
    app.register_blueprint(api_catalogue.bp)
    tokens = IssuedToken.for_service(
        config.url_of("portal"), SERVICE.name, config.service_secret or ""
    )
    # Every dataset action is traced through the tracer's client, as this service itself:
    # written to the outbox with the action, sent after commit.
    app.extensions["dataset.tracer"] = TracerClient(config.url_of("tracer"), tokens)
    install_outbox(app, trace_outbox, lambda traces, timeout: app.extensions[
        "dataset.tracer"].record_many(traces, timeout=timeout))
    revocation_feed.install(app, _revoked_people(app.extensions["vre.db"]), tokens)
    return app


def _revoked_people(db: Database) -> revocation.Loader:
    """This service's own revocations: the people whose access an administrator withdrew."""

    def load() -> revocation.Revocations:
        with db.reading() as session:
            people = frozenset(session.scalars(sa.select(RevokedUser.user_id)))
        return revocation.Revocations(people=people)

    return load


def _install_ingestion(app: Flask, config: Config) -> None:
    policy = DeidPolicy()
    if config.deid_policy_file is not None:
        try:
            data = tomllib.loads(config.deid_policy_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("VRE_DEID_POLICY_FILE", str(exc)) from None
        policy = DeidPolicy.from_mapping(data)
    check_import_root(config.import_root_path, config.home, config.repository_path)
    db = app.extensions["vre.db"]
    repository = Repository(config.repository_path)
    app.extensions["dataset.repository"] = repository
    # Each batch of studies that enters is traced in its transaction through the outbox, as
    # every other dataset action.
    app.extensions["dataset.ingestor"] = ingestor = Ingestor(
        db, repository, policy, config.ingest_workers,
        trace=lambda session, trace: outbox_of(app).record(session, checked_trace(trace)),
    )
    # One ingestion at a time: each already uses every core for reading headers.
    app.extensions["dataset.ingest_executor"] = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="ingest"
    )
    app.extensions["dataset.live_ingests"] = {}
    # Runs whose process died did not finish (re-running them resumes): they end as
    # interrupted, and what they left in the repository goes; live ones are left alone.
    # Before the database is migrated there is nothing to recover: /readyz says so.
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        ingestor.recover()
