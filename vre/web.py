"""What every service's app factory shares: request ids, structured request logs, Prometheus
metrics, /healthz and /readyz, the error model, body limits, token validation, OpenAPI."""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Executor
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vre import __version__
from vre.api import openapi_document
from vre.config import Config
from vre.db import Database
from vre.errors import register_error_handlers
from vre.logs import REQUEST_ID_HEADER, configure_logging
from vre.tokens import TokenValidator

log = logging.getLogger("vre.request")


def create_service_app(
    name: str, config: Config, migrations: str, *, title: str, html_errors: Any = None,
    import_name: str | None = None,
) -> Flask:
    """A Flask app with the platform's common parts; the service adds its blueprints."""
    configure_logging(name, config.log_level)
    app = Flask(import_name or name)
    app.config.update(MAX_CONTENT_LENGTH=config.max_body_bytes, JSON_SORT_KEYS=False)
    app.extensions["vre.config"] = config
    app.extensions["vre.service"] = name
    app.extensions["vre.db"] = Database.for_service(config, name, migrations)
    app.extensions["vre.validator"] = validator_for(config)
    register_error_handlers(app, html_errors)
    _install_request_hooks(app, name)
    app.register_blueprint(_probes(title))
    return app


def validator_for(config: Config, audience: str | None = None) -> TokenValidator:
    """The one token validator: people's issuer, and the portal for what it makes."""
    return TokenValidator(config.issuer, audience or config.token_audience, config.jwks,
                          platform=(config.portal_issuer, config.portal_jwks))


def close_app(app: Flask) -> None:
    """Stop what an app started (its trace sender, its thread pools) and close its database
    connections, as a process must before it forks: a fork copies into the child any lock
    another thread holds at that moment (SQLite's, say), and the child waits on it for ever."""
    outbox = app.extensions.get("vre.outbox")
    if outbox is not None:
        outbox.stop()
    for extension in app.extensions.values():
        if isinstance(extension, Executor):
            extension.shutdown(wait=True, cancel_futures=True)
    app.extensions["vre.db"].engine.dispose()


def config_of(app: Flask | None = None) -> Config:
    return (app or current_app).extensions["vre.config"]


def db_of(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["vre.db"]


def _install_request_hooks(app: Flask, service: str) -> None:
    registry = CollectorRegistry()
    app.extensions["vre.metrics"] = registry
    requests_total = Counter(
        "vre_http_requests_total", "HTTP requests handled",
        ["service", "method", "endpoint", "status"], registry=registry)
    latency = Histogram(
        "vre_http_request_duration_seconds", "HTTP request latency",
        ["service", "method", "endpoint"], registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        # Accept a caller's id only if it is harmless to log and echo.
        ok = 0 < len(incoming) <= 64 and all(c.isalnum() or c in "-_." for c in incoming)
        g.request_id = incoming if ok else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "<unmatched>"
        requests_total.labels(service, request.method, endpoint, response.status_code).inc()
        latency.labels(service, request.method, endpoint).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        principal = g.get("principal")
        log.info("request", extra={
            "event": "request", "method": request.method, "path": request.path,
            "status": response.status_code, "duration_ms": round(elapsed * 1000, 2),
            "subject": principal.subject if principal else None})
        return response


def _probes(title: str) -> Blueprint:
    bp = Blueprint("probes", __name__)

    @bp.get("/healthz")
    def healthz() -> Any:
        """The process is up and answering."""
        return jsonify(status="ok", service=current_app.extensions["vre.service"])

    @bp.get("/readyz")
    def readyz() -> Any:
        """The database is reachable and migrated to head."""
        ready, reason = db_of().readiness()
        body = {"status": "ready" if ready else "not_ready", "reason": reason,
                "service": current_app.extensions["vre.service"]}
        return jsonify(body), 200 if ready else 503

    @bp.get("/metrics")
    def metrics() -> Response:
        data = generate_latest(current_app.extensions["vre.metrics"])
        return Response(data, mimetype=CONTENT_TYPE_LATEST)

    @bp.get("/api/v1/openapi.json")
    def openapi() -> Any:
        return jsonify(openapi_document(current_app, title, __version__))

    return bp
