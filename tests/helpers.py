"""Small helpers the tests share."""

from __future__ import annotations

import socket


def auth(token: str) -> dict[str, str]:
    """Headers that carry a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
