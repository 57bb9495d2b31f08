"""The anchoring worker's decisions, without a chain or a database."""

from __future__ import annotations

import pytest

from tracer.anchoring import AnchorPolicy, HistoryMismatch, check_history, should_checkpoint
from tracer.chain import Anchor
from tracer.merkle import MerkleTree, leaf_hash

POLICY = AnchorPolicy(interval_seconds=5, batch_traces=100)


@pytest.mark.parametrize("log_size,checkpoint_size,waited,expected", [
    (0, 0, 60, False),     # nothing to checkpoint, however long we waited
    (10, 10, 60, False),   # nothing new
    (11, 10, 1, False),    # a little new, not long enough
    (11, 10, 5, True),     # the interval has passed
    (110, 10, 0, True),    # a full batch is waiting
])
def test_checkpoint_when_the_interval_passes_or_a_batch_waits(
        log_size: int, checkpoint_size: int, waited: float, expected: bool) -> None:
    assert should_checkpoint(log_size, checkpoint_size, waited, POLICY) is expected


def tree_of(n: int) -> MerkleTree:
    return MerkleTree(leaf_hash(str(i).encode()) for i in range(n))


def test_an_empty_chain_matches_any_log() -> None:
    check_history(None, 5, tree_of(5).root)


def test_the_chain_root_must_be_one_this_log_had() -> None:
    tree = tree_of(10)
    check_history(Anchor(0, 7, tree.root(7), 0), 10, tree.root)
    with pytest.raises(HistoryMismatch, match="differs"):
        check_history(Anchor(0, 7, b"\x00" * 32, 0), 10, tree.root)


def test_a_chain_ahead_of_the_log_means_truncation() -> None:
    tree = tree_of(3)
    with pytest.raises(HistoryMismatch, match="truncated"):
        check_history(Anchor(0, 9, b"\x01" * 32, 0), 3, tree.root)
