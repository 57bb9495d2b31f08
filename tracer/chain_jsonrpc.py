"""ChainClient over plain Ethereum JSON-RPC (web3.py), for Hyperledger Besu and anvil alike.

Only standard ``eth_*`` methods are used, and every transaction is built here in full rather than
auto-filled by web3.py or the node: signed locally with the tracer's key, legacy type with an
explicit ``gasPrice`` of 0 (the permissioned network runs free gas; an auto-filled EIP-1559 fee
could be refused or charge the account), a gas limit from ``eth_estimateGas`` with a margin, the
account's pending nonce, and the chain id the node reports. web3.py's default middleware (gas
price strategy, ENS, buffered gas estimates) is switched off for the same reason.

A node is reached over HTTP (``http(s)://`` URLs: Besu) or over its IPC socket (a filesystem path:
the one-machine development node, whose socket sits in an owner-only directory so that no other
local user can reach it).

The ABI and code come from the committed artifact ``tracer/contracts/TraceAnchor.json``, so no
Solidity compiler is needed at run time.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import requests

from tracer.chain import (
    Anchor,
    AnchorReceipt,
    ChainClient,
    ChainError,
    ChainUnavailable,
    ContractMismatch,
    validate_anchor_args,
    validate_leaf_args,
)
from vre.client import connect_unix
from vre.imports import keeping_recursion_limit

with keeping_recursion_limit():
    from eth_account import Account
    from eth_utils import keccak
    from web3 import Web3
    from web3.exceptions import (
        BadFunctionCallOutput,
        ContractLogicError,
        ProviderConnectionError,
        TransactionIndexingInProgress,
        TransactionNotFound,
        Web3Exception,
        Web3RPCError,
    )
    from web3.providers.base import JSONBaseProvider
    from web3.types import RPCEndpoint, RPCResponse

__all__ = ["ARTIFACT_NAME", "JsonRpcChainClient", "UnixSocketProvider", "load_artifact"]

ARTIFACT_NAME = "TraceAnchor.json"

_ANCHORED_TOPIC = keccak(text="Anchored(uint256,uint64,bytes32)")
_LEAF_ANCHORED_TOPIC = keccak(text="LeafAnchored(uint64,bytes32)")


@functools.cache
def load_artifact() -> dict[str, Any]:
    """The committed compiled artifact (abi, bytecode, deployedBytecode, compiler settings)."""
    text = resources.files("tracer.contracts").joinpath(ARTIFACT_NAME).read_text("utf-8")
    return json.loads(text)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


class UnixSocketProvider(JSONBaseProvider):
    """JSON-RPC over a node's IPC socket, one connection per request.

    web3's own IPCProvider keeps one socket and, once the node behind it restarts, spins on the
    dead socket until its timeout and then reports a generic error; here a node that is gone is
    an :class:`OSError` at once (mapped to :class:`ChainUnavailable`), and a restarted one is
    simply reached again.
    """

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        request = self.encode_rpc_request(method, params)
        with connect_unix(self.path, self.timeout) as sock:
            sock.sendall(request + b"\n")
            raw = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError(f"the node at {self.path} closed the connection")
                raw += chunk
                if raw.rstrip().endswith((b"}", b"]")):
                    try:
                        return self.decode_rpc_response(raw)
                    except ValueError:
                        continue  # a brace inside a longer answer: read on

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            return "result" in self.make_request(RPCEndpoint("eth_chainId"), [])
        except (OSError, ValueError):
            return False


class JsonRpcChainClient(ChainClient):
    """:class:`~tracer.chain.ChainClient` speaking JSON-RPC to one node.

    ``url`` is the node's HTTP endpoint or the path of its IPC socket; ``private_key`` the
    tracer account's key (hex string or 32 bytes; it is only used to sign locally and never
    sent); ``address`` an already deployed contract (it is *not* checked here: call
    :meth:`check_contract` at start-up). ``timeout`` bounds each request so a dead node is
    reported within seconds; ``receipt_timeout`` bounds the wait for a transaction to be mined.
    """

    def __init__(
        self,
        url: str,
        private_key: str | bytes,
        address: str | None = None,
        *,
        timeout: float = 5.0,
        receipt_timeout: float = 60.0,
        gas_margin: float = 1.25,
    ) -> None:
        self.url = url
        self.receipt_timeout = receipt_timeout
        self.gas_margin = gas_margin
        self._local_account = Account.from_key(private_key)
        provider: JSONBaseProvider
        if url.startswith(("http://", "https://")):
            provider = Web3.HTTPProvider(
                url,
                request_kwargs={"timeout": timeout},
                # web3's default retries with backoff on connection errors would turn "node
                # down" into a long stall; the caller decides whether and when to retry.
                exception_retry_configuration=None,
            )
        else:
            provider = UnixSocketProvider(url, timeout)
        self._w3 = Web3(provider, middleware=[])
        artifact = load_artifact()
        self._abi = artifact["abi"]
        self._bytecode = artifact["bytecode"]
        self._runtime = bytes.fromhex(artifact["deployedBytecode"].removeprefix("0x"))
        self._encoder = self._w3.eth.contract(abi=self._abi)
        self._chain_id: int | None = None
        # Held from nonce lookup to broadcast so concurrent senders never reuse a nonce; the
        # (possibly long) wait for the receipt happens outside it.
        self._send_lock = threading.Lock()
        self.address = Web3.to_checksum_address(address) if address else None

    def __repr__(self) -> str:
        # Deliberately omits the key.
        return (f"{type(self).__name__}(url={self.url!r}, account={self.account}, "
                f"address={self.address})")

    @property
    def account(self) -> str:
        return self._local_account.address

    # -- ChainClient -----------------------------------------------------------------------

    def deploy(self) -> str:
        receipt = self._transact(None, self._bytecode, "deploy")
        address = receipt["contractAddress"]
        if not address:
            raise ChainError(f"deployment {_hex(receipt['transactionHash'])} created no contract")
        # Catches a node that mangled the deployment (or a stale artifact) before anyone relies
        # on the address.
        self.check_contract(address)
        return Web3.to_checksum_address(address)

    def check_contract(self, address: str) -> None:
        try:
            checksummed = Web3.to_checksum_address(address)
        except (ValueError, TypeError) as exc:
            raise ContractMismatch(f"not an Ethereum address: {address!r}") from exc
        with self._rpc("check_contract"):
            code = bytes(self._w3.eth.get_code(checksummed))
            if not code:
                raise ContractMismatch(f"no contract code at {checksummed}")
            if code != self._runtime:
                raise ContractMismatch(
                    f"code at {checksummed} is not this TraceAnchor build "
                    f"({len(code)} bytes, expected {len(self._runtime)})"
                )
            owner = self._contract(checksummed).functions.owner().call()
        if Web3.to_checksum_address(owner) != self.account:
            raise ContractMismatch(
                f"TraceAnchor at {checksummed} is owned by {owner}, not by {self.account}"
            )
        self.address = checksummed

    def anchor(self, tree_size: int, root: bytes) -> AnchorReceipt:
        validate_anchor_args(tree_size, root)
        address = self._require_address()
        data = self._encoder.encode_abi("anchor", args=[tree_size, bytes(root)])
        receipt = self._transact(address, data, f"anchor(tree_size={tree_size})")
        index = self._event_index(receipt, address, _ANCHORED_TOPIC)
        return self._anchor_receipt(receipt, index)

    def anchor_leaf(self, index: int, leaf_hash: bytes) -> AnchorReceipt:
        validate_leaf_args(index, leaf_hash)
        address = self._require_address()
        data = self._encoder.encode_abi("anchorLeaf", args=[index, bytes(leaf_hash)])
        receipt = self._transact(address, data, f"anchor_leaf(index={index})")
        return self._anchor_receipt(receipt, self._event_index(receipt, address,
                                                               _LEAF_ANCHORED_TOPIC))

    def anchors(self, start: int = 0) -> list[Anchor]:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        functions = self._contract(self._require_address()).functions
        with self._rpc("anchors"):
            # One block for every read, so an anchor mined meanwhile cannot skew count vs. items.
            block = self._w3.eth.block_number
            count = functions.anchorCount().call(block_identifier=block)
            return [self._read_anchor(functions, i, block) for i in range(start, count)]

    def latest_anchor(self) -> Anchor | None:
        functions = self._contract(self._require_address()).functions
        with self._rpc("latest_anchor"):
            block = self._w3.eth.block_number
            count = functions.anchorCount().call(block_identifier=block)
            if count == 0:
                return None
            return self._read_anchor(functions, count - 1, block)

    def is_available(self) -> bool:
        try:
            with self._rpc("is_available"):
                self._w3.eth.chain_id  # noqa: B018  # the request is the point
            return True
        except Exception:  # the contract says is_available never raises
            return False

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _rpc(self, what: str) -> Iterator[None]:
        """Map transport and node errors onto the ChainClient exceptions."""
        try:
            yield
        except ChainError:
            raise
        except (requests.RequestException, ProviderConnectionError, OSError) as exc:
            # Connection refused/reset, timeouts, and HTTP errors from a proxy in front of Besu.
            raise ChainUnavailable(f"{what}: node at {self.url} unreachable: {exc}") from exc
        except ContractLogicError as exc:
            raise ChainError(f"{what} refused by the contract: {exc.message or exc}") from exc
        except BadFunctionCallOutput as exc:
            raise ContractMismatch(f"{what}: contract at {self.address} answered nothing: "
                                   f"{exc}") from exc
        except Web3RPCError as exc:
            raise ChainError(f"{what}: node error: {exc.message or exc}") from exc
        except Web3Exception as exc:
            raise ChainError(f"{what}: {exc}") from exc

    def _contract(self, address: str) -> Any:
        return self._w3.eth.contract(address=address, abi=self._abi)

    def _require_address(self) -> str:
        if self.address is None:
            raise ChainError("no contract address: call deploy() or check_contract() first")
        return self.address

    def _read_anchor(self, functions: Any, index: int, block: int) -> Anchor:
        tree_size, root, timestamp = functions.anchorAt(index).call(block_identifier=block)
        return Anchor(index=index, tree_size=tree_size, root=bytes(root), timestamp=timestamp)

    def _get_chain_id(self) -> int:
        # Read once: a node's chain id does not change, and it saves a round trip per anchor.
        if self._chain_id is None:
            self._chain_id = self._w3.eth.chain_id
        return self._chain_id

    def _transact(self, to: str | None, data: str, what: str) -> Any:
        """Sign, send and wait for one transaction; returns its (successful) receipt."""
        with self._rpc(what):
            with self._send_lock:
                tx: dict[str, Any] = {
                    "from": self.account, "data": data, "value": 0, "gasPrice": 0,
                }
                if to is not None:
                    tx["to"] = to
                # Estimating first also surfaces a revert with its reason before anything is
                # broadcast (Besu only puts reasons in receipts with --revert-reason-enabled).
                estimate = self._w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
                del tx["from"]
                tx["gas"] = int(estimate * self.gas_margin)
                tx["chainId"] = self._get_chain_id()
                # "pending" counts our own transactions still in the pool, so back-to-back
                # sends (or a send after an unmined one) get the next free nonce.
                tx["nonce"] = self._w3.eth.get_transaction_count(self.account, "pending")
                signed = self._local_account.sign_transaction(tx)
                self._w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self._wait_for_receipt(bytes(signed.hash))
        if receipt["status"] != 1:
            raise ChainError(f"{what}: transaction {_hex(receipt['transactionHash'])} reverted "
                             f"in block {receipt['blockNumber']}")
        return receipt

    def _wait_for_receipt(self, tx_hash: bytes) -> Any:
        # Poll fast first (anvil mines instantly), then back off towards Besu's block period.
        deadline = time.monotonic() + self.receipt_timeout
        delay = 0.002
        while True:
            try:
                return self._w3.eth.get_transaction_receipt(tx_hash)
            except (TransactionNotFound, TransactionIndexingInProgress):
                pass
            if time.monotonic() >= deadline:
                raise ChainError(f"transaction {_hex(tx_hash)} not mined within "
                                 f"{self.receipt_timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _event_index(receipt: Any, address: str, topic: bytes) -> int:
        for log in receipt["logs"]:
            topics = log["topics"]
            if (Web3.to_checksum_address(log["address"]) == address and topics
                    and bytes(topics[0]) == topic):
                return int.from_bytes(bytes(topics[1]), "big")
        raise ChainError(f"transaction {_hex(receipt['transactionHash'])} succeeded without "
                         "the expected event")

    @staticmethod
    def _anchor_receipt(receipt: Any, index: int) -> AnchorReceipt:
        return AnchorReceipt(
            tx_hash=_hex(receipt["transactionHash"]),
            block_number=receipt["blockNumber"],
            block_hash=_hex(receipt["blockHash"]),
            gas_used=receipt["gasUsed"],
            index=index,
        )
