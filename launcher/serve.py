"""Serves one service's app with Granian: HTTP handled by its Rust runtime, the Flask app
run on a pool of Python threads per worker process; graceful stop on SIGTERM."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

from vre.config import Config
from vre.services import Service, service
from vre.web import close_app

if TYPE_CHECKING:
    from flask import Flask


def app_factory(svc: Service) -> Callable[[Config], Flask]:
    """The service's `create_app`, imported by the name the registry gives (the core names
    the services but imports none of them; the launcher, above them, does)."""
    module, _, name = svc.factory.partition(":")
    return getattr(importlib.import_module(module), name)


def checked_before_fork(name: str, config: Config) -> Flask:
    """Build the service's app once, so a bad configuration stops here with its message,
    then close it: Granian forks its workers from this process, which must hold no thread
    and no connection then (see vre.web.close_app); each worker builds its own app."""
    before = set(threading.enumerate())
    app = app_factory(service(name))(config)
    close_app(app)
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    if left:
        raise RuntimeError(f"{name}: threads still run after closing the app, and would "
                           f"hold locks across the workers' fork: {', '.join(sorted(left))}")
    return app


def serve(svc: Service, config: Config, port: int) -> None:
    """Run until SIGTERM/SIGINT. Each worker builds the app with `create_app()` from the
    environment, as the caller did to check it; the app logs each request itself."""
    Granian(
        svc.factory, factory=True, interface=Interfaces.WSGI,
        address=config.host, port=port, workers=config.workers,
        blocking_threads=config.threads, log_level=LogLevels.warning, log_access=False,
        respawn_failed_workers=True, workers_kill_timeout=10,
    ).serve()
