"""The ledger as `vre up` runs it on one machine, attacked and broken for real: the chain node
killed and frozen while services append traces, and another local user (or a process without
the tracer's key) trying to write to the anchor contract."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account

from launcher.supervisor import RESTART_MAX
from tests.integration.test_vre_up import Platform, drop_schemas, vre_env
from tracer.chain import ChainError
from tracer.chain_config import chain_key_file, contract_address
from tracer.chain_jsonrpc import JsonRpcChainClient
from tracer.devnode import ANVIL_DEV_ADDRESS, ANVIL_DEV_PRIVATE_KEY
from vre.config import Config, load_config
from vre.service_auth import command_line_tokens

pytestmark = pytest.mark.integration
NOBODY = 65534
HASH = "sha256:" + "cd" * 32


@pytest.fixture
def platform(tmp_path: Path, backend: str) -> Iterator[Platform]:
    # Anchor every second, so a test waits for catching up in seconds rather than minutes.
    env = vre_env(tmp_path / "var", backend, VRE_ANCHOR_INTERVAL_SECONDS="1", VRE_DEMO_DATA="false")
    running = Platform(env)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()
        drop_schemas(env)


def config_of(platform: Platform) -> Config:
    return load_config(env=platform.env)


def processes(platform: Platform) -> dict[str, int]:
    state = json.loads((Path(platform.env["VRE_HOME"]) / "run" / "state.json").read_text())
    return {p["name"]: p["pid"] for p in state["processes"]}


def chain_node_pid(platform: Platform) -> int:
    """The node itself: the supervised process is bubblewrap, the node its only child."""
    wrapper = processes(platform)["chain"]
    children = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def vre_status(platform: Platform) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "status"],
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    health = {}
    for line in result.stdout.splitlines()[2:]:
        name, _pid, _restarts, rest = line.split(None, 3)
        health[name] = rest
    return result.returncode, health


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def post_traces(platform: Platform, count: int) -> list[dict[str, Any]]:
    """Append traces as the dataset service does; each must be acknowledged."""
    tokens = command_line_tokens(config_of(platform), None, None, client="dataset_service")
    assert tokens is not None
    batch = [
        {
            "id": str(uuid.uuid4()),
            "actor": f"user-{i}",
            "action": "USE_DATASETS",
            "datasets": [{"id": "ds-1", "hash": HASH}],
        }
        for i in range(count)
    ]
    response = requests.post(
        platform.url("tracer") + "/api/v1/traces",
        json=batch,
        timeout=30,
        headers={"Authorization": f"Bearer {tokens.token()}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["traces"]


def chain_reader(platform: Platform) -> JsonRpcChainClient:
    config = config_of(platform)
    return JsonRpcChainClient(config.chain_rpc_url, Account.create().key, contract_address(config))


def anchored_size(platform: Platform) -> int:
    try:
        latest = chain_reader(platform).latest_anchor()
    except ChainError:
        return 0
    return latest.tree_size if latest else 0


def verify_from_home(platform: Platform) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracer", "verify", "--home", platform.env["VRE_HOME"]],
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_killed_chain_node_is_restarted_and_anchoring_catches_up(platform: Platform) -> None:
    acked = post_traces(platform, 5)
    wait_for(lambda: anchored_size(platform) >= 5, "the first anchor")
    before = processes(platform)
    node = chain_node_pid(platform)

    os.kill(node, signal.SIGKILL)
    # While the node is down or coming back, every trace is still acknowledged.
    for _ in range(3):
        acked += post_traces(platform, 4)
    assert platform.proc.poll() is None, "the platform keeps running"

    wait_for(
        lambda: processes(platform)["chain"] != before["chain"],
        "the node's restart",
        timeout=RESTART_MAX,
    )
    after = processes(platform)
    assert {k: v for k, v in after.items() if k != "chain"} == {
        k: v for k, v in before.items() if k != "chain"
    }, "nothing else was restarted"
    wait_for(lambda: anchored_size(platform) >= len(acked), "anchoring to catch up")
    wait_for(lambda: vre_status(platform)[0] == 0, "every process to be ready")

    # Every acknowledged trace is in the log at the position it was acknowledged with.
    assert [t["seq"] for t in acked] == list(range(len(acked)))
    assert platform.stop() == 0
    result = verify_from_home(platform)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"log size {len(acked)}, anchored {len(acked)}" in result.stdout


def test_vre_status_shows_a_frozen_process_as_unhealthy(platform: Platform) -> None:
    code, health = vre_status(platform)
    assert code == 0 and set(health) == set(processes(platform)), health
    assert set(health.values()) <= {"ready", "running"}, health
    frozen = {
        "chain": chain_node_pid(platform),
        "tracer": processes(platform)["tracer"],
        "anchor": processes(platform)["anchor"],
    }
    for name, pid in frozen.items():
        os.kill(pid, signal.SIGSTOP)
        try:
            code, health = vre_status(platform)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert code == 1, health
        assert health[name].startswith("not answering"), health
        assert all(h in ("ready", "running") for n, h in health.items() if n != name), health
    wait_for(lambda: vre_status(platform)[0] == 0, "every process to answer again")


def test_no_one_but_the_tracer_can_write_to_the_anchor_contract(platform: Platform) -> None:
    config = config_of(platform)
    home = Path(platform.env["VRE_HOME"])
    # The owner is the tracer's own key, generated on first start and kept owner-only.
    key_file = chain_key_file(config)
    assert key_file.stat().st_mode & 0o777 == 0o600
    owner = Account.from_key(key_file.read_text().strip()).address
    reader = chain_reader(platform)
    assert reader.address is not None
    ours = JsonRpcChainClient(config.chain_rpc_url, key_file.read_text().strip(), reader.address)
    ours.check_contract(reader.address)  # owned by the tracer's account
    assert owner != ANVIL_DEV_ADDRESS
    assert not holds_dev_key(home), "no development key is used or kept anywhere"

    # The node signs for nobody: it has no accounts of its own to send from.
    w3 = ours._w3  # the same connection the tracer uses
    assert w3.eth.accounts == []

    # A local process without the key is refused by the contract and changes nothing.
    post_traces(platform, 2)
    wait_for(lambda: anchored_size(platform) >= 2, "the first anchor")
    anchors = reader.anchors()
    stranger = JsonRpcChainClient(config.chain_rpc_url, Account.create().key, reader.address)
    with pytest.raises(ChainError):
        stranger.anchor(anchors[-1].tree_size + 1_000, b"\x01" * 32)
    assert reader.anchors() == anchors

    # Another local user cannot reach the node at all: not its socket, not any port.
    node = chain_node_pid(platform)
    assert os.readlink(f"/proc/{node}/ns/net") != os.readlink("/proc/self/ns/net"), (
        "the node listens in a network namespace of its own"
    )
    # The interpreter of this test may sit in a folder only its owner can enter.
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert python is not None, "a system python3 runs the other user's probe"
    result = subprocess.run(
        [python, "-I", "-S", "-c", FOREIGN_PROBE, config.chain_rpc_url, str(config.chain_port)],
        user=NOBODY,
        group=NOBODY,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {
        "socket": "PermissionError",
        "port": "ConnectionRefusedError",
    }
    assert reader.anchors() == anchors


def holds_dev_key(home: Path) -> bool:
    """Whether a file of the data directory holds the development node's public key."""
    needle = ANVIL_DEV_PRIVATE_KEY.removeprefix("0x").encode()
    return any(
        needle in path.read_bytes()
        for path in home.rglob("*")
        if path.is_file() and path.stat().st_size < 10_000_000
    )


# Run as another local user with nothing but the standard library: try the node's IPC socket,
# then the port the node was told to listen on.
FOREIGN_PROBE = """
import json, socket, sys
found = {}
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sys.argv[1])
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"anvil_setBalance","params":[]}\\n')
        found["socket"] = "connected"
except OSError as exc:
    found["socket"] = type(exc).__name__
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5):
        found["port"] = "connected"
except OSError as exc:
    found["port"] = type(exc).__name__
print(json.dumps(found))
"""
