"""The chain client contract: how the tracer anchors Merkle-log roots on an Ethereum chain.

The tracer talks to the chain only through :class:`ChainClient`, so the transport (plain JSON-RPC
against Besu or anvil today: :mod:`tracer.chain_jsonrpc`) can be swapped without touching the
ledger code, in the way JupyterHub's ``Spawner`` separates what a spawner must do from how.
Which implementation, node and contract a process uses comes from :mod:`tracer.chain_config`;
this module imports neither, so implementations can import it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = [
    "MAX_UINT64",
    "ROOT_SIZE",
    "Anchor",
    "AnchorReceipt",
    "ChainClient",
    "ChainError",
    "ChainUnavailable",
    "ContractMismatch",
]

ROOT_SIZE = 32
MAX_UINT64 = 2**64 - 1


class ChainError(Exception):
    """A chain operation failed: a reverted or refused transaction, an RPC error, a bad answer."""


class ChainUnavailable(ChainError):
    """The node cannot be reached: connection refused, reset, timed out, or an HTTP-level error.

    Distinct from :class:`ChainError` because it is transient: the caller may queue the work and
    retry later, whereas a revert will fail the same way again.
    """


class ContractMismatch(ChainError):
    """The address does not hold our TraceAnchor contract (other code, no code, or other owner)."""


@dataclass(frozen=True)
class Anchor:
    """One stored anchor: the log's root when it held ``tree_size`` leaves.

    ``index`` is the anchor's position in the contract's array (0-based, in anchoring order);
    ``timestamp`` is the Unix time (seconds) of the block that stored it.
    """

    index: int
    tree_size: int
    root: bytes
    timestamp: int


@dataclass(frozen=True)
class AnchorReceipt:
    """Proof that an anchoring transaction was mined and succeeded.

    ``index`` is the anchor's index for :meth:`ChainClient.anchor` and the leaf index for
    :meth:`ChainClient.anchor_leaf`. ``tx_hash`` and ``block_hash`` are 0x-prefixed hex.
    """

    tx_hash: str
    block_number: int
    block_hash: str
    gas_used: int
    index: int


class ChainClient(abc.ABC):
    """Anchors the tracer's Merkle-log roots in a TraceAnchor contract (tracer/contracts).

    The contract every implementation keeps:

    * **Identity.** A client acts for exactly one account (the tracer's key) and one contract
      address, held in :attr:`address` (``None`` until :meth:`deploy` or :meth:`check_contract`
      sets it). Only that account can anchor: the contract's owner is its deployer.
    * **deploy() -> str** deploys a fresh TraceAnchor owned by our account, waits until it is
      mined, sets :attr:`address` and returns it (0x-prefixed, checksummed). Called once per
      network by an operator, never implicitly.
    * **check_contract(address) -> None** verifies, without sending any transaction, that the
      code at ``address`` is exactly our compiled runtime code (the committed artifact's
      ``deployedBytecode``) and that its ``owner()`` is our account; raises
      :class:`ContractMismatch` otherwise (including when there is no code). On success it sets
      :attr:`address`. It never deploys: a missing contract is a configuration error to report,
      not to paper over.
    * **anchor(tree_size, root) -> AnchorReceipt** stores the log root for ``tree_size`` leaves
      and returns once the transaction is mined. ``tree_size`` must exceed the last anchored size
      (a log only grows); a refused or reverted transaction raises :class:`ChainError` and
      changes nothing on chain.
    * **anchor_leaf(index, leaf_hash) -> AnchorReceipt** per-trace mode: one transaction per
      leaf, recorded as an event only. ``index`` must exceed every leaf index anchored before.
    * **anchors(start=0) -> list[Anchor]** the stored anchors from index ``start`` on, in order,
      read through the contract's views from one consistent block.
    * **latest_anchor() -> Anchor | None** the most recent anchor, ``None`` when there is none.
    * **is_available() -> bool** whether the node answers now; never raises.

    Errors: every method except :meth:`is_available` raises :class:`ChainUnavailable` when the
    node cannot be reached (promptly: implementations use short network timeouts and do not
    retry silently), :class:`ChainError` for anything the node or contract refused. A
    transaction that was sent but not mined within the client's receipt timeout (or whose send
    timed out) raises too, yet may still be mined later: before retrying, reconcile with
    :meth:`latest_anchor` (a blind retry of the same size is refused, never duplicated). Roots and
    leaf hashes are 32 raw bytes; a wrong length or an out-of-range integer is a ``ValueError``
    raised before anything is sent. Methods that need :attr:`address` raise :class:`ChainError`
    while it is unset. Implementations must be safe to call from several threads (transactions
    from one account need distinct nonces).
    """

    address: str | None = None

    @property
    @abc.abstractmethod
    def account(self) -> str:
        """The checksummed address of the account this client signs with."""

    @abc.abstractmethod
    def deploy(self) -> str:
        """Deploy a new TraceAnchor owned by our account; set and return :attr:`address`."""

    @abc.abstractmethod
    def check_contract(self, address: str) -> None:
        """Raise :class:`ContractMismatch` unless ``address`` holds our contract, owned by us."""

    @abc.abstractmethod
    def anchor(self, tree_size: int, root: bytes) -> AnchorReceipt:
        """Anchor ``root`` as the log root at ``tree_size`` leaves; wait for the receipt."""

    @abc.abstractmethod
    def anchor_leaf(self, index: int, leaf_hash: bytes) -> AnchorReceipt:
        """Anchor a single leaf hash (per-trace mode); wait for the receipt."""

    @abc.abstractmethod
    def anchors(self, start: int = 0) -> list[Anchor]:
        """The stored anchors with index >= ``start``, in order."""

    @abc.abstractmethod
    def latest_anchor(self) -> Anchor | None:
        """The most recent anchor, or ``None`` when nothing was anchored yet."""

    @abc.abstractmethod
    def is_available(self) -> bool:
        """Whether the node answers right now. Never raises."""


def validate_anchor_args(tree_size: int, root: bytes) -> None:
    """Raise ``ValueError`` for arguments the contract could never accept (shared by clients)."""
    if not isinstance(tree_size, int) or isinstance(tree_size, bool):
        raise ValueError(f"tree_size must be an int, got {type(tree_size).__name__}")
    if not 1 <= tree_size <= MAX_UINT64:
        raise ValueError(f"tree_size must be in 1..2**64-1, got {tree_size}")
    _validate_hash("root", root)


def validate_leaf_args(index: int, leaf_hash: bytes) -> None:
    """Raise ``ValueError`` for a leaf index or hash the contract could never accept."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"leaf index must be an int, got {type(index).__name__}")
    # MAX_UINT64 itself is excluded: the contract computes index + 1 as uint64.
    if not 0 <= index < MAX_UINT64:
        raise ValueError(f"leaf index must be in 0..2**64-2, got {index}")
    _validate_hash("leaf_hash", leaf_hash)


def _validate_hash(name: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != ROOT_SIZE:
        raise ValueError(f"{name} must be {ROOT_SIZE} raw bytes")
