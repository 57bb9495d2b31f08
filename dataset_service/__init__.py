"""The dataset service: the only authority over imaging data (ingestion, datasets, FAIR
metadata, search, access grants)."""

from __future__ import annotations

from flask import Flask

from dataset_service import api
from vre.config import Config, load_config
from vre.services import service
from vre.web import create_service_app

SERVICE = service("dataset_service")


def create_app(config: Config | None = None) -> Flask:
    """Build the dataset service from its configuration (from the environment when not given)."""
    config = config or load_config()
    config.require(*SERVICE.requires)
    app = create_service_app(SERVICE.name, config, SERVICE.migrations, title=SERVICE.title,
                             import_name=__name__)
    app.register_blueprint(api.bp)
    return app
