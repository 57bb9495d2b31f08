"""The desktop image's display (images/desktop/start-display.sh), run for real against
TigerVNC where it is installed: VNC authentication only, and a clipboard that the server
never sends out but takes in, whatever an X client of the session asks of it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.charts import REPO

SCRIPT = REPO / "images" / "desktop" / "start-display.sh"
NEEDED = ("Xvnc", "vncpasswd", "vncconfig")


@pytest.fixture(autouse=True)
def _vnc_installed() -> None:
    missing = [tool for tool in NEEDED if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/setup.sh --test installs "
                    "TigerVNC and openbox")


def _free_display() -> int:
    for number in range(40, 100):
        if not Path(f"/tmp/.X{number}-lock").exists() and \
                not Path(f"/tmp/.X11-unix/X{number}").exists():
            return number
    raise RuntimeError("no free X display between :40 and :99")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _greeting(port: int, deadline: float) -> bytes:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                version = conn.recv(12)
                conn.sendall(b"RFB 003.008\n")
                count = conn.recv(1)
                return version + count + conn.recv(count[0])
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    password = tmp_path / "password"
    password.write_text("s3cret-pw")
    display, port = _free_display(), _free_port()
    env = {**os.environ, "VNC_PORT": str(port), "DISPLAY_NUMBER": str(display),
           "VNC_PASSWORD_FILE": str(password), "VNC_GEOMETRY": "1024x768"}
    process = subprocess.Popen(["sh", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield process, display, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_vnc_asks_for_the_password_and_nothing_else(
        desktop: tuple[subprocess.Popen[bytes], int, int]) -> None:
    _process, _display, port = desktop
    greeting = _greeting(port, time.monotonic() + 15)
    assert greeting[:12] == b"RFB 003.008\n"
    assert list(greeting[13:]) == [2]  # one security type: VNC authentication


def test_the_clipboard_goes_in_but_not_out(
        desktop: tuple[subprocess.Popen[bytes], int, int]) -> None:
    _process, display, port = desktop
    _greeting(port, time.monotonic() + 15)

    def parameter(name: str) -> str:
        result = subprocess.run(["vncconfig", "-display", f":{display}", "-get", name],
                                capture_output=True, text=True, timeout=10, check=True)
        return result.stdout.strip()

    assert parameter("SendCutText") == "0"
    assert parameter("AcceptCutText") == "1"
    # What any program on the display (the session's) may try: it changes nothing.
    subprocess.run(["vncconfig", "-display", f":{display}", "-set", "SendCutText=1",
                    "-set", "SendPrimary=1"], capture_output=True, timeout=10, check=False)
    assert parameter("SendCutText") == "0"
    assert parameter("SendPrimary") == "0"


def test_stopping_the_desktop_stops_the_server(
        desktop: tuple[subprocess.Popen[bytes], int, int]) -> None:
    process, display, port = desktop
    _greeting(port, time.monotonic() + 15)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/tmp/.X11-unix/X{display}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/tmp/.X11-unix/X{display}").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_without_a_password_the_desktop_does_not_start(tmp_path: Path) -> None:
    env = {**os.environ, "VNC_PASSWORD_FILE": str(tmp_path / "missing"),
           "DISPLAY_NUMBER": str(_free_display()), "VNC_PORT": str(_free_port())}
    result = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                            timeout=10, check=False)
    assert result.returncode == 2
    assert "no VNC password" in result.stderr
