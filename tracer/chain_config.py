"""Which chain node, anchor contract and account a process of the platform uses, from its
configuration: an external node (Besu) by URL, or on one machine the development node's IPC
socket in the data directory, with the tracer's own key kept among the platform's secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tracer.chain import ChainClient
from tracer.chain_jsonrpc import JsonRpcChainClient
from vre.config import Config, ConfigError
from vre.imports import keeping_recursion_limit

with keeping_recursion_limit():
    from eth_account import Account

__all__ = [
    "chain_client",
    "chain_key_file",
    "contract_address",
    "contract_file",
    "ensure_chain_key",
    "tracer_chain_key",
]


def contract_file(config: Config) -> Path:
    return config.home / "chain" / "contract.json"


def contract_address(config: Config) -> str | None:
    """The anchor contract: configured, or the one `vre up` deployed on this machine."""
    if config.chain_contract:
        return config.chain_contract
    path = contract_file(config)
    if path.is_file():
        return json.loads(path.read_text())["address"]
    return None


def chain_key_file(config: Config) -> Path:
    """Where one-machine mode keeps the tracer's chain account key (owner-only, 0600)."""
    return config.home / "secrets" / "tracer-chain-key"


def ensure_chain_key(config: Config) -> None:
    """Create the tracer's chain account on first start unless a key is configured.

    The key is written owner-only before any byte of it, so no other local user can read it,
    and it never leaves this file: processes that sign read it here, not from the environment.
    """
    path = chain_key_file(config)
    if config.chain_private_key or path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("0x" + bytes(Account.create().key).hex() + "\n")


def tracer_chain_key(config: Config) -> str | None:
    """The tracer's chain key: configured (a cluster's secret), else the generated one."""
    if config.chain_private_key:
        return config.chain_private_key
    path = chain_key_file(config)
    return path.read_text().strip() if path.is_file() else None


def chain_client(
    config: Config, address: str | None, *, writer: bool = False, endpoint: str | None = None
) -> ChainClient:
    """A client of the configured node (or of `endpoint`, a URL or IPC socket path): as the
    tracer's account when it must send transactions (or check that the contract is the
    tracer's), otherwise as a throwaway account unless a key is configured (reading needs no
    account of ours)."""
    key = tracer_chain_key(config) if writer else config.chain_private_key
    if key is None:
        if writer:
            raise ConfigError("VRE_CHAIN_PRIVATE_KEY", "is required to send transactions")
        key = Account.create().key.hex()
    return JsonRpcChainClient(endpoint or config.chain_rpc_url, key, address)
