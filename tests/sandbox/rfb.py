"""A minimal RFB (VNC) client for the tests: the 3.8 handshake with security type None,
pointer and key events, and the server's clipboard messages. Just enough to prove who can
open a desktop and what leaves it."""

from __future__ import annotations

import socket
import struct
import time


class WebSocketStream:
    """A WebSocket client connection seen as a byte stream, for RFB through the proxy."""

    def __init__(self, connection: object) -> None:
        self.connection = connection
        self.buffer = b""
        self.timeout: float | None = 10

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def recv(self, size: int) -> bytes:
        if not self.buffer:
            try:
                message = self.connection.recv(timeout=self.timeout)  # type: ignore[attr-defined]
            except TimeoutError:
                raise
            self.buffer = message if isinstance(message, bytes) else message.encode()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def sendall(self, data: bytes) -> None:
        self.connection.send(data)  # type: ignore[attr-defined]


class RfbClient:
    """One RFB connection over an already connected socket."""

    def __init__(self, sock: socket.socket | WebSocketStream) -> None:
        self.sock = sock
        self.width = self.height = 0
        self.name = ""
        self.cut_texts: list[bytes] = []

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the VNC server closed the connection")
            data += chunk
        return data

    def handshake(self) -> None:
        version = self._exact(12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"not an RFB server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        (count,) = struct.unpack("!B", self._exact(1))
        types = self._exact(count)
        if 1 not in types:
            raise ConnectionError(f"the server offers no security type None: {list(types)}")
        self.sock.sendall(b"\x01")
        (result,) = struct.unpack("!I", self._exact(4))
        if result != 0:
            raise ConnectionError("security handshake failed")
        self.sock.sendall(b"\x01")  # shared
        self.width, self.height = struct.unpack("!HH", self._exact(4))
        self._exact(16)
        (length,) = struct.unpack("!I", self._exact(4))
        self.name = self._exact(length).decode(errors="replace")

    def request_update(self, incremental: bool = True) -> None:
        self.sock.sendall(struct.pack("!BBHHHH", 3, int(incremental), 0, 0,
                                      self.width, self.height))

    def read_messages(self, seconds: float) -> None:
        """Read server messages for a while, keeping clipboard texts and skipping the rest."""
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.5)
        self.set_pixel_format_raw()
        while time.monotonic() < deadline:
            self.request_update()
            try:
                kind = self._exact(1)[0]
            except TimeoutError:
                continue
            if kind == 0:
                self._skip_update()
            elif kind == 1:
                self._exact(3)
                (count,) = struct.unpack("!H", self._exact(2))
                self._exact(6 * count)
            elif kind == 2:
                pass
            elif kind == 3:
                self._exact(3)
                (length,) = struct.unpack("!I", self._exact(4))
                self.cut_texts.append(self._exact(length))
            else:
                raise ConnectionError(f"unexpected server message {kind}")

    def set_pixel_format_raw(self) -> None:
        """Ask for 32-bit pixels in raw encoding only, so updates are simple to skip."""
        pixel = struct.pack("!BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        self.sock.sendall(b"\x00\x00\x00\x00" + pixel)
        self.sock.sendall(struct.pack("!BxHi", 2, 1, 0))

    def _skip_update(self) -> None:
        self._exact(1)
        (rects,) = struct.unpack("!H", self._exact(2))
        for _ in range(rects):
            _, _, w, h, encoding = struct.unpack("!HHHHi", self._exact(12))
            if encoding == 0:
                self._exact(w * h * 4)
            elif encoding == -223:  # desktop size
                self.width, self.height = w, h
            else:
                raise ConnectionError(f"unexpected encoding {encoding}")

    def send_cut_text(self, text: bytes) -> None:
        self.sock.sendall(struct.pack("!B3xI", 6, len(text)) + text)
