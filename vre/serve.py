"""Serves one service's app with gunicorn (threads, graceful stop on SIGTERM)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from vre.config import Config


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def serve(app: Flask, config: Config, port: int) -> None:
    """Run until SIGTERM/SIGINT; the app logs each request itself."""
    _Server(app, {
        "bind": f"{config.host}:{port}",
        "workers": config.workers,
        "worker_class": "gthread",
        "threads": config.threads,
        "graceful_timeout": 10,
        "timeout": 120,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "vre",
    }).run()
