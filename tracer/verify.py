"""Full verification of the log without trusting the tracer's database: every entry must sit
at its position, hash to its leaf, name its predecessor's leaf, and the roots recomputed from
all leaves must equal the roots anchored on the chain (and those in the tracer's signed
checkpoints). The columns and the index the log's queries answer from must also be exactly
what the hashed traces say, whether read from the database or over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tracer.merkle import MerkleTree
from tracer.schema import DatasetUpdate, dataset_links, lookup_columns

# Canonical records have sorted keys, so "seq" is always followed by "time" (and preceded by
# "prev" where the trace names its predecessor); a string value cannot contain this byte
# sequence because its quotes would be escaped.
_SEQ = re.compile(rb'(?:"prev":"([0-9a-f]{64})",)?"seq":(\d+),"time":"')
_PUBLISH = b'"update":"' + DatasetUpdate.PUBLISH.value.encode() + b'"'


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
        self._last_leaf: bytes | None = None
        self._linked = False  # once traces name their predecessor, every later one must

    def feed(self, seq: int, body: bytes, stored_leaf: bytes) -> bool:
        """Check one entry; False once a divergence is found (then stop feeding)."""
        if self.report.divergence is not None:
            return False
        position = self._size
        if seq != position:
            return self._fail(position, f"entry {position} is missing (the next stored "
                                        f"entry is {seq}): deleted or reordered")
        match = _SEQ.search(body)
        if match is None or int(match.group(2)) != position:
            named = match.group(2).decode() if match else "none"
            return self._fail(position, f"the trace stored at {position} names position "
                                        f"{named}: moved or swapped")
        leaf = hashlib.sha256(b"\x00" + body).digest()
        if leaf != stored_leaf:
            return self._fail(position, "the stored trace does not hash to its leaf: edited")
        prev = match.group(1)
        if prev is not None:
            if self._last_leaf is None or bytes.fromhex(prev.decode()) != self._last_leaf:
                if self._last_leaf is None:
                    return self._fail(position, "the first trace names a predecessor")
                # The successor still holds the leaf its predecessor had when it was written.
                return self._fail(position - 1, (
                    f"the trace stored at {position - 1} is not the one trace {position} "
                    f"follows: edited, and its leaf hash recomputed to hide it"))
            self._linked = True
        elif self._linked:
            return self._fail(position, f"the trace stored at {position} does not name its "
                                        f"predecessor as every trace since the first link "
                                        f"does: edited")
        self._last_leaf = leaf
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

    def fail(self, seq: int, reason: str) -> bool:
        """Record a divergence found outside the entries themselves (in the index)."""
        return self._fail(seq, reason)

    def _fail(self, seq: int, reason: str) -> bool:
        if self.report.divergence is None:
            self.report.divergence = Divergence(seq, reason)
        return False


@dataclass(frozen=True)
class IndexedEntry:
    """A stored trace with what the log's queries read beside it: its lookup columns
    (id, actor, action, update, recorded_at as the record's time) and its dataset index rows."""

    seq: int
    body: bytes
    leaf_hash: bytes
    columns: dict[str, Any]
    datasets: list[str]


def index_divergence(entry: IndexedEntry) -> str | None:
    """Why the lookup columns or dataset links of an entry are not what its hashed record says
    (None when they are). Called once the entry itself verified."""
    record = json.loads(entry.body)
    expected = {**lookup_columns(record), "recorded_at": record["time"]}
    for name, value in expected.items():
        if entry.columns.get(name) != value:
            return (f"its {name} column says {entry.columns.get(name)!r} but the hashed trace "
                    f"says {value!r}: the lookup column was edited, so queries by it would lie")
    named = dataset_links(record)
    if sorted(entry.datasets) != sorted(named):
        return (f"the dataset index lists {sorted(entry.datasets)} but the hashed trace names "
                f"{named}: the index was edited, so a dataset's history would lie")
    return None


def publication_divergence(first_publish: dict[str, int],
                           published: dict[str, int]) -> Divergence | None:
    """The table of public histories must hold exactly the datasets whose PUBLISH trace is in
    the log, each at its first such trace: a row added there would make a private history
    public, a row removed would hide a public one."""
    for dataset_id in sorted(set(first_publish) | set(published),
                             key=lambda d: min(first_publish.get(d, 2**63),
                                               published.get(d, 2**63))):
        want, have = first_publish.get(dataset_id), published.get(dataset_id)
        if want != have:
            seq = want if want is not None else have
            assert seq is not None
            return Divergence(seq, f"dataset {dataset_id!r} is listed as published at "
                                   f"{have} but its first PUBLISH trace is at {want}: the "
                                   f"published-datasets table was edited")
    return None


class IndexedLogVerifier:
    """The log and what its queries answer from, verified together, the same whether read
    from the database or over HTTP: each entry as LogVerifier checks it, then its lookup
    columns and dataset links against its hashed record; at the end, the dataset index rows
    that name no trace of the log and the table of public histories."""

    def __init__(self, verifier: LogVerifier) -> None:
        self.verifier = verifier
        self.end = 0  # entries fed so far
        self._first_publish: dict[str, int] = {}

    def feed(self, entry: IndexedEntry) -> bool:
        """Check one entry; False once a divergence is found (then stop feeding)."""
        if not self.verifier.feed(entry.seq, entry.body, entry.leaf_hash):
            return False
        reason = index_divergence(entry)
        if reason is not None:
            return self.verifier.fail(entry.seq, f"the trace at {entry.seq} verifies, "
                                                 f"but {reason}")
        if _PUBLISH in entry.body:
            for dataset_id in entry.datasets:
                self._first_publish.setdefault(dataset_id, entry.seq)
        self.end = entry.seq + 1
        return True

    def finish(self, log_size: int, stray_link: int | None,
               published: dict[str, int]) -> VerifyReport:
        """Close the run. `stray_link`: the first trace the dataset index lists that the log
        does not hold; `published`: the table of public histories, dataset id to the position
        of its publication, as far as the entries fed reach."""
        if self.verifier.report.divergence is None:
            if stray_link is not None:
                self.verifier.fail(stray_link, f"the dataset index lists trace {stray_link}, "
                                               f"which the log does not hold: the index was "
                                               f"edited")
            else:
                wrong = publication_divergence(self._first_publish, published)
                if wrong is not None:
                    self.verifier.fail(wrong.seq, wrong.reason)
        return self.verifier.finish(log_size)
