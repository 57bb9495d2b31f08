"""Desktop start time: from the launch request to a screen a viewer can draw (the RFB
ServerInit through the VNC proxy, which is when noVNC reports "connected"), through a running
`vre up`, against a bare Xvnc plus websockify started by hand in the same run.

Prints p50 and p95 over --launches starts of each, their ratio (target: p50 under 3 s and
within 1.5x of the bare start), then --together desktops started at once: the slowest start
and the memory each desktop holds (proportional set size of its processes, shared pages
divided among the desktops that share them).

    .venv/bin/python bench/desktop_start.py [--launches 10] [--together 8]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from portal.compute.local import descendants
from tests.helpers import free_port
from tests.platform import platform_env, start_vre_up, stop_vre_up
from tests.sandbox.rfb import RfbClient, WebSocketStream

ADMIN_PASSWORD = "bench-admin-password"
FLAVOR = "desktop"


class Platform:
    """`vre up` with the demo data in a scratch data directory, on free ports."""

    def __init__(self, workdir: Path) -> None:
        env = platform_env(workdir, ADMIN_PASSWORD)
        self.env = env
        self.home = Path(env["VRE_HOME"])
        self.portal = f"http://127.0.0.1:{env['VRE_PORTAL_PORT']}"
        self.datasets = f"http://127.0.0.1:{env['VRE_DATASET_PORT']}"
        try:
            self.process, self.log = start_vre_up(env, workdir, seconds=600)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        answer = requests.post(self.portal + "/api/v1/tokens", timeout=30, json={
            "grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD})
        answer.raise_for_status()
        self.headers = {"Authorization": "Bearer " + answer.json()["access_token"]}

    def call(self, method: str, url: str, **body: Any) -> dict[str, Any]:
        answer = requests.request(method, url, headers=self.headers, timeout=60,
                                  json=body or None)
        if not answer.ok:
            raise RuntimeError(f"{method} {url}: {answer.status_code} {answer.text[:300]}")
        return dict(answer.json())

    def stop(self) -> None:
        stop_vre_up(self.process)


def wait_for(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def screen_through(url: str, origin: str, protocols: tuple[str, ...] = ("binary",),
                   seconds: float = 30) -> None:
    """Open a WebSocket to a VNC server (offering the subprotocols: the proxy's ticket is one)
    and complete the RFB handshake up to ServerInit."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with connect(url, origin=origin, open_timeout=5,
                         subprotocols=list(protocols)) as connection:
                RfbClient(WebSocketStream(connection)).handshake()
                return
        except (OSError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no screen at {url.split('?')[0]}: {exc}") from None
            time.sleep(0.02)


def platform_start(platform: Platform, dataset_id: str) -> tuple[float, str]:
    """Launch request to ServerInit through the proxy: seconds, and the desktop's id."""
    began = time.perf_counter()
    desktop = platform.call("POST", platform.portal + "/api/v1/desktops", flavor=FLAVOR,
                            datasets=[dataset_id])
    url = platform.portal + f"/api/v1/desktops/{desktop['id']}"

    def ready() -> bool:
        shown = platform.call("GET", url)
        if shown["state"] not in ("starting", "running"):
            output = platform.home / "workloads" / str(desktop["id"]) / "output.log"
            raise RuntimeError(f"desktop {desktop['id']} {shown['state']}: {shown['reason']}\n"
                               + output.read_text(errors="replace")[-2000:])
        return any(p["message"] == "desktop ready" for p in shown.get("progress", []))

    wait_for(ready, "the desktop's VNC server")
    ticket = platform.call("POST", url + "/ticket")
    screen_through(ticket["url"], platform.portal, ("binary", ticket["protocol"]))
    return time.perf_counter() - began, str(desktop["id"])


def bare_start(folder: Path, display: int) -> float:
    """Xvnc on a Unix socket and websockify in front of it, started by hand, to ServerInit."""
    sock = folder / f"bare-{display}.sock"
    port = free_port()
    began = time.perf_counter()
    xvnc = subprocess.Popen(["Xvnc", f":{display}", "-rfbport", "-1", "-rfbunixpath", str(sock),
                             "-rfbunixmode", "0600", "-SecurityTypes", "None", "-nolisten",
                             "tcp", "-geometry", "1600x900", "-depth", "24"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen(["websockify", "--unix-target", str(sock), f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        screen_through(f"ws://127.0.0.1:{port}/", "http://127.0.0.1")
        return time.perf_counter() - began
    finally:
        for process in (proxy, xvnc):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        sock.unlink(missing_ok=True)


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def desktop_memory_mib(home: Path, desktop_id: str) -> float:
    import json

    state = json.loads((home / "workloads" / desktop_id / "state.json").read_text())
    return pss_mib([int(state["pid"]), *descendants(int(state["pid"]))])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@contextlib.contextmanager
def running_platform(workdir: Path) -> Iterator[Platform]:
    platform = Platform(workdir)
    try:
        yield platform
    finally:
        platform.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--together", type=int, default=8)
    args = parser.parse_args()
    for tool in ("Xvnc", "websockify", "bwrap"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="vre-bench-") as scratch, \
            running_platform(Path(scratch)) as platform:
        found = platform.call("GET", platform.datasets + "/api/v1/catalogue?q=knee")["results"]
        dataset_id = found[0]["id"]
        me = platform.call("GET", platform.portal + "/api/v1/me")
        platform.call("POST", platform.portal + "/api/v1/quotas", scope="user",
                      subject=me["subject"], max_desktops=args.together + 1)
        platform_times, bare_times = [], []
        for launch in range(args.launches):  # interleaved, so drift hits both alike
            bare_times.append(bare_start(Path(scratch), 40 + launch))
            seconds, desktop_id = platform_start(platform, dataset_id)
            platform_times.append(seconds)
            platform.call("DELETE", platform.portal + f"/api/v1/desktops/{desktop_id}")
        p50, bare50 = statistics.median(platform_times), statistics.median(bare_times)
        print(f"desktop start, launch request to VNC ServerInit through the proxy "
              f"({args.launches} launches, flavor {FLAVOR}):")
        print(f"  platform  p50 {p50:6.2f} s   p95 {percentile(platform_times, 0.95):6.2f} s")
        print(f"  bare      p50 {bare50:6.2f} s   p95 {percentile(bare_times, 0.95):6.2f} s"
              "   (Xvnc + websockify by hand)")
        print(f"  ratio     p50 {p50 / bare50:6.2f}x   (target: p50 under 3 s, within 1.5x)")

        with ThreadPoolExecutor(args.together) as pool:
            started = list(pool.map(lambda _: platform_start(platform, dataset_id),
                                    range(args.together)))
        time.sleep(2)  # let each session settle before measuring what it holds
        memory = [desktop_memory_mib(platform.home, d) for _, d in started]
        slowest = max(s for s, _ in started)
        print(f"{args.together} desktops started at once: slowest start {slowest:.2f} s, "
              f"memory per desktop {statistics.mean(memory):.0f} MiB "
              f"(min {min(memory):.0f}, max {max(memory):.0f}, proportional set size)")
        for _, desktop_id in started:
            platform.call("DELETE", platform.portal + f"/api/v1/desktops/{desktop_id}")


if __name__ == "__main__":
    main()
