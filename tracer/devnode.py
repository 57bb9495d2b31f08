"""Run a local anvil node: the one-machine development chain standing in for Besu.

anvil comes from npm (``npm install`` in the repository root installs ``@foundry-rs/anvil``,
whose platform package ships the static binary). The node runs free gas (gas price and base
fee 0), like the production Besu network, so legacy transactions with ``gasPrice=0`` from any
account are accepted.

The platform's own node (:func:`private_node_argv`) creates no accounts and is reachable only
through its IPC socket: it runs in a network namespace of its own (bubblewrap), so its HTTP port
exists for nobody, and the socket sits in an owner-only directory. Any process that can reach a
development node can rewrite its state (``anvil_setStorageAt``, impersonation), so reaching it
must be the privilege, not merely holding a key.

Tests: :data:`ANVIL_DEV_PRIVATE_KEY` is anvil's well-known first dev account, derived from the
public "test test ... junk" mnemonic. Anyone can sign with it; it serves throwaway test nodes
(:func:`running_anvil`) only, never the platform's chain.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "ANVIL_CHAIN_ID", "ANVIL_DEV_ADDRESS", "ANVIL_DEV_PRIVATE_KEY", "ANVIL_DEV_PRIVATE_KEYS",
    "AnvilNotFound", "anvil_argv", "anvil_path", "free_port", "private_node_argv",
    "running_anvil",
]

ANVIL_CHAIN_ID = 1337

#: anvil's first default dev account (mnemonic "test test test test test test test test test
#: test test junk", m/44'/60'/0'/0/0). DEVELOPMENT ONLY: the key is public.
ANVIL_DEV_PRIVATE_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
#: The first two default dev accounts' keys (index 1: 0x70997970C51812dc3A010C7d01b50e0d17dc79C8).
#: DEVELOPMENT ONLY.
ANVIL_DEV_PRIVATE_KEYS = (
    ANVIL_DEV_PRIVATE_KEY,
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0

# npm's platform package names (see @foundry-rs/anvil's const.mjs) keyed by Python's names.
_NPM_PLATFORMS = {
    ("Linux", "x86_64"): "linux-amd64",
    ("Linux", "aarch64"): "linux-arm64",
    ("Darwin", "x86_64"): "darwin-amd64",
    ("Darwin", "arm64"): "darwin-arm64",
}


class AnvilNotFound(FileNotFoundError):
    """No anvil binary could be found."""


def _node_modules_candidates(root: Path) -> list[Path]:
    modules = root / "node_modules"
    found = []
    suffix = _NPM_PLATFORMS.get((platform.system(), platform.machine()))
    if suffix:
        # The static binary itself: preferred over the .bin/anvil node wrapper so that signals
        # reach anvil directly and no node process sits in between.
        found.append(modules / "@foundry-rs" / f"anvil-{suffix}" / "bin" / "anvil")
    found.append(modules / ".bin" / "anvil")
    return found


def anvil_path() -> Path:
    """Locate the anvil binary.

    Order: ``$VRE_ANVIL_BIN`` (an explicit choice wins), then the repository's ``node_modules``
    (and the current directory's, for an installed package), then ``PATH``.
    """
    override = os.environ.get("VRE_ANVIL_BIN")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AnvilNotFound(f"VRE_ANVIL_BIN={override} is not an executable file")
        return path
    for root in dict.fromkeys((REPO_ROOT, Path.cwd())):
        for candidate in _node_modules_candidates(root):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    which = shutil.which("anvil")
    if which:
        return Path(which)
    raise AnvilNotFound(
        f"anvil not found: run `npm install` in {REPO_ROOT} (installs @foundry-rs/anvil from "
        "package.json), or set VRE_ANVIL_BIN to an anvil binary, or put anvil on PATH"
    )


def anvil_argv(port: int, state_file: Path | None = None) -> list[str]:
    """Full command line (binary first) for a quiet free-gas anvil on 127.0.0.1:``port``.

    With ``state_file`` the chain is loaded from it when it exists and dumped to it on exit.
    """
    argv = [
        str(anvil_path()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chain-id", str(ANVIL_CHAIN_ID),
        # Free gas as on the Besu network: legacy gasPrice=0 transactions must be accepted.
        "--gas-price", "0",
        "--base-fee", "0",
        "--no-priority-fee",
        # No dev accounts: nothing the node would sign for whoever asks (eth_sendTransaction).
        "--accounts", "0",
        "--quiet",
    ]
    if state_file is not None:
        argv += ["--state", str(state_file)]
    return argv


def private_node_argv(ipc_path: Path, state_file: Path, port: int = 8545) -> list[str]:
    """The platform's node: anvil in a network namespace of its own (only loopback, so its
    HTTP port is unreachable from the host), answering on the IPC socket at ``ipc_path``.

    The socket's directory must be owner-only (0700): that is what keeps other local users
    off the chain. The state is dumped every second and on exit, and loaded on start.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise AnvilNotFound("bubblewrap (bwrap) is needed to run the local chain node privately: "
                            "install it (apt-get install bubblewrap), or set VRE_CHAIN_URL to "
                            "an external node")
    return [bwrap, "--dev-bind", "/", "/", "--unshare-net", "--die-with-parent", "--",
            *anvil_argv(port, state_file), "--state-interval", "1", "--ipc", str(ipc_path)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chain_id(url: str, timeout: float) -> int | None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(url, data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        # Only ever called with the http://127.0.0.1 URL built by running_anvil.
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(json.load(response)["result"], 16)
    except (OSError, ValueError, KeyError):
        return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # SIGINT is anvil's Ctrl-C path, which dumps --state before exiting.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_anvil(port: int, state_file: Path | None = None) -> Iterator[str]:
    """Run anvil on 127.0.0.1:``port`` for the duration of the block; yields its HTTP URL.

    Waits (up to 15 s) until ``eth_chainId`` answers; on leaving, stops it with SIGINT so a
    ``state_file`` is written, killing it if it does not exit within 10 s.
    """
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(anvil_argv(port, state_file), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + _START_TIMEOUT
            while _chain_id(url, timeout=1.0) != ANVIL_CHAIN_ID:
                if proc.poll() is not None or time.monotonic() >= deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace").strip()
                    state = (f"exited with {proc.returncode}" if proc.poll() is not None
                             else f"did not answer within {_START_TIMEOUT:g} s")
                    raise RuntimeError(f"anvil on port {port} {state}: {output}")
                time.sleep(0.05)
            yield url
        finally:
            _stop(proc)
