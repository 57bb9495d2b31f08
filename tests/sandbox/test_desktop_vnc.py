"""A desktop in a really launched sandbox: its VNC server listens only on a Unix socket in the
run folder that the platform may open and no other local account can; what is copied inside
does not leave through the clipboard unless the platform allows it (the positive control
shows the test would see it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portal.compute import Resources
from portal.compute.local import SESSION, LocalBackend
from tests.sandbox.conftest import processes_named, spec, wait_exit
from tests.sandbox.rfb import RfbClient
from vre.client import connect_unix

pytestmark = pytest.mark.skipif(not shutil.which("Xvnc"), reason="needs TigerVNC's Xvnc")

DESKTOP = Resources(cpus=1, memory_mib=1024, pids=512, max_runtime_seconds=300)
# Inside the desktop: the session, and a program that keeps putting text on the clipboard.
WAIT_DISPLAY = "while [ ! -S /tmp/.X11-unix/X1 ]; do sleep 0.1; done; sleep 1; "
COPYING = ("{session} & " + WAIT_DISPLAY + "{before}"
           "for i in $(seq 200); do printf 'inside-%s' $i | DISPLAY=:1 xclip -selection "
           "clipboard -i -loops 1 & sleep 0.3; done; wait")
# What code in the session may try to bring copy-out back: ask the VNC server, then put a VNC
# server of its own where the platform's socket was on one machine before.
TAMPERING = ("echo sees: $(ls -A /run/vre) $(pgrep -x Xvnc || echo no-xvnc); "
             "vncconfig -display :1 -set SendCutText=1 -set SendPrimary=1; "
             "echo vncconfig: $?; "
             "Xvnc :2 -rfbport -1 -rfbunixpath /run/vre/vnc.sock -SecurityTypes None "
             "-SendCutText=1 >/dev/null 2>&1 & sleep 1; ")


def start_desktop(compute: LocalBackend, *, clipboard_out: bool = False,
                  before: str = "") -> str:
    command = ["bash", "-c", COPYING.format(session=SESSION / "desktop-session", before=before)]
    workload = spec(command, kind="desktop", resources=DESKTOP, clipboard_out=clipboard_out)
    compute.start(workload)
    deadline = time.monotonic() + 30
    while compute.vnc_socket(workload.workload_id) is None:
        if time.monotonic() > deadline or compute.poll(workload.workload_id) is not None:
            log, _ = compute.logs(workload.workload_id)
            raise AssertionError(f"the desktop did not come up: {log.decode(errors='replace')}")
        time.sleep(0.1)
    return workload.workload_id


def connect(path: Path) -> RfbClient:
    sock = connect_unix(path, timeout=10)  # as the proxy does: the data directory may be deep
    client = RfbClient(sock)
    client.handshake()
    return client


def test_the_desktop_listens_on_its_socket_only(compute: LocalBackend) -> None:
    workload_id = start_desktop(compute)
    path = compute.vnc_socket(workload_id)
    assert path is not None and path.stat().st_mode & 0o077 == 0
    client = connect(path)
    assert client.width > 0 and client.height > 0
    assert "desktop" in compute.progress(workload_id)[-1].message


def test_another_local_account_cannot_open_the_desktop(compute: LocalBackend) -> None:
    workload_id = start_desktop(compute)
    path = compute.vnc_socket(workload_id)
    # Through the socket's folder, as the proxy connects: a deep data directory passes the
    # kernel's limit on socket paths.
    probe = ("import os, socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    os.chdir(os.path.dirname(sys.argv[1]))\n"
             "    s.connect(os.path.basename(sys.argv[1])); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)")
    seen = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-c", probe, str(path)],
                          capture_output=True, text=True)
    assert seen.stdout.strip() == "PermissionError", seen


def test_copy_out_through_the_clipboard_stays_off(compute: LocalBackend) -> None:
    client = connect(compute.vnc_socket(start_desktop(compute)))
    client.read_messages(6)
    assert client.cut_texts == []


def test_nothing_in_the_session_brings_copy_out_back(compute: LocalBackend) -> None:
    workload_id = start_desktop(compute, before=TAMPERING)
    client = connect(compute.vnc_socket(workload_id))
    client.read_messages(6)
    assert client.cut_texts == []
    log = compute.logs(workload_id)[0].decode(errors="replace")
    # The session saw neither the VNC socket nor the VNC server, and could change nothing.
    seen = next(line for line in log.splitlines() if line.startswith("sees:")).split()[1:]
    assert "vnc.sock" not in seen and "no-xvnc" in seen, log


def test_positive_control_copy_out_is_seen_when_allowed(compute: LocalBackend) -> None:
    client = connect(compute.vnc_socket(start_desktop(compute, clipboard_out=True)))
    client.read_messages(6)
    assert any(text.startswith(b"inside-") for text in client.cut_texts)


def test_a_desktop_whose_vnc_server_dies_ends(compute: LocalBackend) -> None:
    workload_id = start_desktop(compute)
    keeper = json.loads((compute.root / workload_id / "state.json").read_text())["pid"]
    servers = processes_named(keeper, "Xvnc")
    assert len(servers) == 1
    os.kill(servers[0], signal.SIGKILL)  # as a crash would
    exited = wait_exit(compute, workload_id)
    log, _ = compute.logs(workload_id)
    assert b"VNC server ended" in log
    assert exited.status != 0


def test_the_research_desktop_has_its_tools(compute: LocalBackend) -> None:
    tools = ("xterm", "pcmanfm", "mousepad", "aeskulap", "amide", "dcmdump", "dcm2niix")
    checks = (f"{SESSION / 'desktop-session'} & "
              + WAIT_DISPLAY +
              "echo menu: $(grep -o '<command>[a-z0-9]*' ~/.config/openbox/menu.xml | cut -c10-);"
              f" for t in {' '.join(tools)}; do command -v $t >/dev/null && echo has-$t; done; "
              "python3 -c 'import pydicom, numpy; print(\"has-python\")'; "
              "command -v vre-job >/dev/null || python3 -m batch_tools.cli --help >/dev/null "
              "&& echo has-vre-job")
    workload = spec(["bash", "-c", checks], kind="desktop", resources=DESKTOP)
    compute.start(workload)
    wait_exit(compute, workload.workload_id)
    log = compute.logs(workload.workload_id)[0].decode(errors="replace")
    menu = next(line for line in log.splitlines() if line.startswith("menu:")).split()[1:]
    assert set(menu) == {"xterm", "pcmanfm", "mousepad", "aeskulap", "amide"}, log
    for tool in (*tools, "python", "vre-job"):
        assert f"has-{tool}" in log.split(), log
