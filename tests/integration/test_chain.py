"""JsonRpcChainClient and TraceAnchor against a real anvil node on a free loopback port.

Needs ``npm install`` in the repository root (anvil comes from @foundry-rs/anvil); a missing
binary fails the tests with the install hint rather than skipping them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from tests.ledger_helpers import OTHER_CONTRACT_INITCODE, deploy_raw
from tracer.chain import Anchor, ChainError, ChainUnavailable, ContractMismatch
from tracer.chain_jsonrpc import JsonRpcChainClient
from tracer.devnode import (
    ANVIL_DEV_PRIVATE_KEY,
    ANVIL_DEV_PRIVATE_KEYS,
    free_port,
    running_anvil,
)

pytestmark = pytest.mark.integration



def root(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    with running_anvil(free_port()) as url:
        yield url


@pytest.fixture
def client(anvil_url: str) -> JsonRpcChainClient:
    """A client for the owner account with its own freshly deployed contract."""
    c = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEY)
    c.deploy()
    return c


def test_deploy_and_anchor_increasing_sizes(client: JsonRpcChainClient) -> None:
    assert client.is_available()
    assert client.address is not None and Web3.is_checksum_address(client.address)
    assert client.anchors() == []
    assert client.latest_anchor() is None

    receipts = [client.anchor(size, root(size)) for size in (1, 5, 6, 1000)]
    assert [r.index for r in receipts] == [0, 1, 2, 3]
    assert all(r.block_number > 0 and r.tx_hash.startswith("0x") for r in receipts)
    assert len({r.tx_hash for r in receipts}) == 4

    anchors = client.anchors()
    assert [(a.index, a.tree_size, a.root) for a in anchors] == [
        (0, 1, root(1)), (1, 5, root(5)), (2, 6, root(6)), (3, 1000, root(1000)),
    ]
    timestamps = [a.timestamp for a in anchors]
    assert timestamps == sorted(timestamps) and timestamps[0] > 1_600_000_000
    assert client.anchors(start=2) == anchors[2:]
    assert client.anchors(start=10) == []
    assert client.latest_anchor() == anchors[-1]


@pytest.mark.parametrize("size", [10, 9, 1])
def test_equal_or_smaller_size_refused_and_state_unchanged(
    client: JsonRpcChainClient, size: int
) -> None:
    client.anchor(10, root(10))
    before = client.anchors()
    with pytest.raises(ChainError, match="tree size must exceed"):
        client.anchor(size, root(999))
    assert client.anchors() == before
    # The refusal consumed no nonce: the next valid anchor goes through.
    assert client.anchor(11, root(11)).index == 1


def test_non_owner_refused(client: JsonRpcChainClient, anvil_url: str) -> None:
    # A fresh key with no balance: the network is free-gas, so only the owner check stops it.
    stranger = JsonRpcChainClient(anvil_url, Account.create().key, address=client.address)
    with pytest.raises(ChainError, match="not the owner"):
        stranger.anchor(1, root(1))
    with pytest.raises(ChainError, match="not the owner"):
        stranger.anchor_leaf(0, root(1))
    with pytest.raises(ContractMismatch, match="owned by"):
        stranger.check_contract(client.address)  # type: ignore[arg-type]
    assert client.anchors() == []
    # Reads are open to anyone.
    client.anchor(3, root(3))
    assert stranger.anchors() == client.anchors()


def test_check_contract_accepts_our_deployment(client: JsonRpcChainClient,
                                               anvil_url: str) -> None:
    fresh = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEY)
    assert fresh.address is None
    fresh.check_contract(client.address.lower())  # type: ignore[union-attr]
    assert fresh.address == client.address
    client.anchor(7, root(7))
    latest = fresh.latest_anchor()
    assert latest is not None and (latest.index, latest.tree_size, latest.root) == (0, 7, root(7))
    assert isinstance(latest, Anchor)


def test_check_contract_rejects_other_code(client: JsonRpcChainClient, anvil_url: str) -> None:
    other = deploy_raw(anvil_url, ANVIL_DEV_PRIVATE_KEY, OTHER_CONTRACT_INITCODE)
    with pytest.raises(ContractMismatch, match="not this TraceAnchor build"):
        client.check_contract(other)
    assert client.address != other  # a failed check does not rebind the client


def test_check_contract_rejects_account_without_code(client: JsonRpcChainClient) -> None:
    eoa = Account.from_key(ANVIL_DEV_PRIVATE_KEYS[1]).address
    with pytest.raises(ContractMismatch, match="no contract code"):
        client.check_contract(eoa)
    with pytest.raises(ContractMismatch, match="not an Ethereum address"):
        client.check_contract("0x1234")


def test_check_contract_rejects_other_owner(anvil_url: str) -> None:
    theirs = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEYS[1])
    address = theirs.deploy()
    ours = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEY)
    with pytest.raises(ContractMismatch, match="owned by"):
        ours.check_contract(address)
    assert ours.address is None


def test_anchor_leaf(client: JsonRpcChainClient) -> None:
    assert client.anchor_leaf(0, root(100)).index == 0
    assert client.anchor_leaf(1, root(101)).index == 1
    assert client.anchor_leaf(5, root(105)).index == 5  # gaps allowed (mode may start late)
    for index in (5, 3):
        with pytest.raises(ChainError, match="leaf index already anchored"):
            client.anchor_leaf(index, root(1))
    assert client.anchors() == []  # leaf anchors are events only


def test_bad_arguments_rejected_before_sending(client: JsonRpcChainClient) -> None:
    with pytest.raises(ValueError):
        client.anchor(0, root(0))
    with pytest.raises(ValueError):
        client.anchor(2**64, root(0))
    with pytest.raises(ValueError):
        client.anchor(1, b"short")
    with pytest.raises(ValueError):
        client.anchor_leaf(-1, root(0))
    with pytest.raises(ValueError):
        client.anchors(start=-1)


def test_operations_need_an_address(anvil_url: str) -> None:
    c = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEY)
    with pytest.raises(ChainError, match="no contract address"):
        c.anchor(1, root(1))
    with pytest.raises(ChainError, match="no contract address"):
        c.latest_anchor()


def test_stopped_node_is_unavailable_quickly() -> None:
    with running_anvil(free_port()) as url:
        c = JsonRpcChainClient(url, ANVIL_DEV_PRIVATE_KEY)
        c.deploy()
        c.anchor(1, root(1))
    started = time.monotonic()
    assert not c.is_available()
    with pytest.raises(ChainUnavailable):
        c.anchor(2, root(2))
    with pytest.raises(ChainUnavailable):
        c.anchors()
    with pytest.raises(ChainUnavailable):
        c.deploy()
    assert time.monotonic() - started < 2.0


def test_unresponsive_node_times_out_as_unavailable() -> None:
    # A listening socket that never answers: the connect succeeds, the read times out.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        c = JsonRpcChainClient(url, ANVIL_DEV_PRIVATE_KEY, timeout=0.5)
        started = time.monotonic()
        assert not c.is_available()
        with pytest.raises(ChainUnavailable):
            c.check_contract(Account.create().address)
        assert time.monotonic() - started < 3.0


def test_state_persists_across_restart(tmp_path: Path) -> None:
    state = tmp_path / "anvil-state.json"
    port = free_port()
    with running_anvil(port, state_file=state) as url:
        c = JsonRpcChainClient(url, ANVIL_DEV_PRIVATE_KEY)
        address = c.deploy()
        c.anchor(4, root(4))
        c.anchor(8, root(8))
        before = c.anchors()
    assert state.is_file() and state.stat().st_size > 0

    with running_anvil(free_port(), state_file=state) as url:
        c = JsonRpcChainClient(url, ANVIL_DEV_PRIVATE_KEY)
        c.check_contract(address)
        assert c.anchors() == before
        with pytest.raises(ChainError, match="tree size must exceed"):
            c.anchor(8, root(8))
        # The account's nonce survived too, so new transactions are accepted.
        assert c.anchor(9, root(9)).index == 2
        assert c.latest_anchor().tree_size == 9  # type: ignore[union-attr]


def test_concurrent_transactions_get_distinct_nonces(anvil_url: str) -> None:
    # Deployments have no ordering rule in the contract, so any failure here would be a nonce
    # collision between threads sharing one client.
    c = JsonRpcChainClient(anvil_url, ANVIL_DEV_PRIVATE_KEYS[1])
    with ThreadPoolExecutor(4) as pool:
        addresses = list(pool.map(lambda _: c.deploy(), range(8)))
    assert len(set(addresses)) == 8
