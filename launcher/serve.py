"""Serves one service's app with Granian: HTTP handled by its Rust runtime, the Flask app
run on a pool of Python threads per worker process; graceful stop on SIGTERM."""

from __future__ import annotations

from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

from vre.config import Config
from vre.services import Service


def serve(svc: Service, config: Config, port: int) -> None:
    """Run until SIGTERM/SIGINT. Each worker builds the app with `create_app()` from the
    environment, as the caller did to check it; the app logs each request itself."""
    Granian(
        svc.factory, factory=True, interface=Interfaces.WSGI,
        address=config.host, port=port, workers=config.workers,
        blocking_threads=config.threads, log_level=LogLevels.warning, log_access=False,
        respawn_failed_workers=True, workers_kill_timeout=10,
    ).serve()
