"""Serves one service's app with Granian: HTTP handled by its Rust runtime, the Flask app
run on a pool of Python threads per worker process; graceful stop on SIGTERM."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

from vre.config import Config
from vre.services import Service

if TYPE_CHECKING:
    from flask import Flask


def app_factory(svc: Service) -> Callable[[Config], Flask]:
    """The service's `create_app`, imported by the name the registry gives (the core names
    the services but imports none of them; the launcher, above them, does)."""
    module, _, name = svc.factory.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(svc: Service, config: Config, port: int) -> None:
    """Run until SIGTERM/SIGINT. Each worker builds the app with `create_app()` from the
    environment, as the caller did to check it; the app logs each request itself."""
    Granian(
        svc.factory, factory=True, interface=Interfaces.WSGI,
        address=config.host, port=port, workers=config.workers,
        blocking_threads=config.threads, log_level=LogLevels.warning, log_access=False,
        respawn_failed_workers=True, workers_kill_timeout=10,
    ).serve()
