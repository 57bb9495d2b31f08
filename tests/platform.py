"""`vre up` as an operator runs it, in a scratch data directory on free ports: started until
its banner, stopped with Ctrl-C. Shared by the browser tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port

BANNER = "Press Ctrl-C to stop."


def platform_env(workdir: Path, admin_password: str, **settings: str) -> dict[str, str]:
    """The environment of a `vre up` of its own: this process's, without its VRE_ settings,
    a data directory under `workdir`, free ports, and `settings` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update(VRE_HOME=str(workdir / "var"), VRE_PORTAL_PORT=str(free_port()),
               VRE_DATASET_PORT=str(free_port()), VRE_TRACER_PORT=str(free_port()),
               VRE_CHAIN_PORT=str(free_port()), VRE_VNC_PROXY_PORT=str(free_port()),
               VRE_ADMIN_PASSWORD=admin_password, VRE_LOG_LEVEL="WARNING", **settings)
    return env


def start_vre_up(env: dict[str, str], workdir: Path,
                 seconds: float = 300) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `vre up` and wait for its banner; the process and its log. RuntimeError with the
    log's end when it stops or does not get there in time (it is stopped then)."""
    log = workdir / "vre-up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "launcher", "up"], env=env,
                                   cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + seconds
    while BANNER not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_vre_up(process)
            raise RuntimeError(f"vre up did not start (status {process.returncode}); it "
                               f"printed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return process, log


def stop_vre_up(process: subprocess.Popen[bytes], grace: float = 60) -> None:
    """Ctrl-C, as an operator stops it; then kill whatever is left of its session."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
