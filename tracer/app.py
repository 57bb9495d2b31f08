"""The tracer's app factory: the platform's append-only audit ledger (Merkle log, signed
checkpoints, chain anchoring, proofs)."""

from __future__ import annotations

from flask import Flask

from vre import revocation_feed
from vre.config import Config, ConfigError, load_config
from vre.service_auth import IssuedToken
from vre.services import service
from vre.web import create_service_app

SERVICE = service("tracer")


def create_app(config: Config | None = None) -> Flask:
    """Build the tracer from its configuration (from the environment when not given)."""
    from tracer import api

    config = config or load_config()
    config.require(*SERVICE.requires)
    app = create_service_app(SERVICE.name, config, SERVICE.migrations, title=SERVICE.title,
                             import_name=__package__)
    from tracer.checkpoints import CheckpointSigner
    from tracer.ledger import LogTree

    key_path = config.tracer_key_path
    if not key_path.is_file():
        raise ConfigError("VRE_TRACER_KEY_FILE", f"checkpoint signing key not found at {key_path}")
    signer = CheckpointSigner.from_file(key_path)
    app.extensions["tracer.public_key"] = signer.public
    app.extensions["tracer.pseudonym_key"] = signer.derived_secret("public-history-pseudonyms")
    app.extensions["tracer.tree"] = LogTree()
    app.register_blueprint(api.bp)
    # Auditors are people: the tracer refuses them as the portal and the dataset service do.
    revocation_feed.install(app, None, IssuedToken.for_service(
        config.url_of("portal"), SERVICE.name, config.service_secret or ""))
    return app
