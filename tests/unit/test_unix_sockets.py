"""Unix sockets in the data directory, bound and reached however deep the operator put it:
the kernel takes at most 108 bytes of a socket's path."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from vre.client import (
    ServiceClient,
    ServiceUnavailable,
    connect_unix,
    socket_address,
    unix_socket_pool,
)


def deep_folder(tmp_path: Path) -> Path:
    """A folder whose sockets' full paths pass the kernel's 108-byte limit."""
    folder = tmp_path / ("d" * 60) / ("e" * 60)
    folder.mkdir(parents=True)
    return folder


def test_a_socket_in_a_deep_folder_is_bound_and_reached(tmp_path: Path) -> None:
    path = deep_folder(tmp_path) / "service.sock"
    assert len(str(path).encode()) > 108
    with pytest.raises(OSError):  # the plain path is refused by the kernel
        socket.socket(socket.AF_UNIX).connect(str(path))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server, socket_address(path) as address:
        server.bind(address)
        server.listen(1)
        assert path.is_socket()
        with connect_unix(path, timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"


def test_a_missing_socket_is_an_os_error_that_says_why(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connect_unix(deep_folder(tmp_path) / "absent.sock", timeout=1)
    with pytest.raises(FileNotFoundError):
        connect_unix(tmp_path / "no-folder" / "absent.sock", timeout=1)


def test_the_http_client_reaches_a_deep_socket_and_names_a_failure(tmp_path: Path) -> None:
    path = deep_folder(tmp_path) / "api.sock"

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    client = ServiceClient("http://localhost", pool=unix_socket_pool(str(path)))
    with pytest.raises(ServiceUnavailable, match="could not be reached"):
        client._call("GET", "/api/v1/me")
    with socket_address(path) as address:
        server = Server(address, Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert client._call("GET", "/api/v1/me") == {"path": "/api/v1/me"}
    finally:
        server.shutdown()
        server.server_close()
