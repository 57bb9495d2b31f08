"""Small helpers the tests share."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from werkzeug.serving import make_server


def auth(token: str) -> dict[str, str]:
    """Headers that carry a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Serve the app over real HTTP on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@contextmanager
def request_as(app: Flask, client: Any) -> Iterator[None]:
    """A request context that carries the test client's session cookie (its signed-in user)."""
    name = app.config["SESSION_COOKIE_NAME"]
    cookie = client.get_cookie(name)
    headers = {"Cookie": f"{name}={cookie.value}"} if cookie else {}
    with app.test_request_context("/", headers=headers):
        yield
