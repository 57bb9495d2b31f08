"""Full verification of the log without trusting the tracer's database: every entry must sit
at its position, hash to its leaf, and the roots recomputed from all leaves must equal the
roots anchored on the chain (and those in the tracer's signed checkpoints)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.merkle import MerkleTree

# Canonical records have sorted keys, so "seq" is always followed by "time"; a string value
# cannot contain this byte sequence because its quotes would be escaped.
_SEQ = re.compile(rb'"seq":(\d+),"time":"')


@dataclass(frozen=True)
class Divergence:
    """The first place where the log is not what was anchored."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"first bad sequence number {self.seq}: {self.reason}"


@dataclass(frozen=True)
class ExpectedRoot:
    """A root the log must have had at a size, and who vouches for it."""

    tree_size: int
    root: bytes
    source: str  # "chain anchor #i" or "signed checkpoint"


@dataclass
class VerifyReport:
    log_size: int = 0
    leaves: int = 0
    roots_checked: int = 0
    anchored_size: int = 0
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.divergence is None


class LogVerifier:
    """Feed entries in log order; it stops at the first divergence and names its seq."""

    def __init__(self, expected: Iterable[ExpectedRoot]) -> None:
        by_size: dict[int, ExpectedRoot] = {}
        for item in sorted(expected, key=lambda e: (e.tree_size, e.source)):
            # Chain anchors sort before checkpoints of the same size ("chain" < "signed").
            by_size.setdefault(item.tree_size, item)
        self.targets = sorted(by_size.values(), key=lambda e: e.tree_size)
        self._next = 0
        self.tree = MerkleTree()
        self.report = VerifyReport(anchored_size=max(
            (e.tree_size for e in self.targets if e.source.startswith("chain")), default=0))
        self._verified_size = 0
        self._size = 0
        self._pending: list[bytes] = []

    def feed(self, seq: int, body: bytes, stored_leaf: bytes) -> bool:
        """Check one entry; False once a divergence is found (then stop feeding)."""
        if self.report.divergence is not None:
            return False
        position = self._size
        if seq != position:
            return self._fail(position, f"entry {position} is missing (the next stored "
                                        f"entry is {seq}): deleted or reordered")
        match = _SEQ.search(body)
        if match is None or int(match.group(1)) != position:
            named = match.group(1).decode() if match else "none"
            return self._fail(position, f"the trace stored at {position} names position "
                                        f"{named}: moved or swapped")
        leaf = hashlib.sha256(b"\x00" + body).digest()
        if leaf != stored_leaf:
            return self._fail(position, "the stored trace does not hash to its leaf: edited")
        # Leaves are hashed into the tree in bulk, at each size that has a root to check.
        self._pending.append(leaf)
        self._size += 1
        if self._next < len(self.targets) and self.targets[self._next].tree_size == self._size:
            return self._check_roots()
        return True

    def _check_roots(self) -> bool:
        self.tree.extend(self._pending)
        self._pending.clear()
        while self._next < len(self.targets) and \
                self.targets[self._next].tree_size == self.tree.size:
            target = self.targets[self._next]
            self._next += 1
            if self.tree.root() != target.root:
                return self._fail(self._verified_size, (
                    f"the root at tree size {target.tree_size} differs from the {target.source}; "
                    f"a trace in {self._verified_size}..{target.tree_size - 1} was altered"))
            self.report.roots_checked += 1
            self._verified_size = target.tree_size
        return True

    def finish(self, log_size: int) -> VerifyReport:
        """Close the run: a log shorter than what was anchored has been truncated."""
        self.report.log_size = log_size
        self.report.leaves = self._size
        if self.report.divergence is None:
            self._check_roots()
        if self.report.divergence is None:
            if self._next < len(self.targets):
                # A root the log must have had at a size it no longer reaches.
                target = self.targets[self._next]
                self._fail(self.tree.size, f"the log ends at {self.tree.size} traces but the "
                                           f"{target.source} covers {target.tree_size}: "
                                           f"truncated")
            elif self.tree.size < log_size:
                self._fail(self.tree.size, "the log reports more traces than it served")
        if self.report.ok and self.tree.size > self.report.anchored_size:
            self.report.notes.append(
                f"{self.tree.size - self.report.anchored_size} newest traces are not anchored "
                f"yet (they verify against the log only)")
        return self.report

    def _fail(self, seq: int, reason: str) -> bool:
        self.report.divergence = Divergence(seq, reason)
        return False
