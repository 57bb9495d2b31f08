"""The anchoring worker: signs checkpoints of the log and puts their roots on the chain in
batches; keeps going while the chain is down and catches up with one transaction when it
returns; refuses to run against a chain whose history does not match the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from tracer import ledger
from tracer.chain import Anchor, ChainClient, ChainError, ChainUnavailable
from tracer.checkpoints import CheckpointSigner
from tracer.models import AnchorRow, CheckpointRow, LeafAnchorRow, TraceRow
from vre.db import Database, utcnow

log = logging.getLogger(__name__)
LEAVES_PER_STEP = 200


class HistoryMismatch(ChainError):
    """The chain's anchors do not describe this log: wrong database, truncation or tampering."""


@dataclass(frozen=True)
class AnchorPolicy:
    """When to checkpoint: after `interval` seconds or `batch` new traces, whichever first."""

    interval_seconds: float = 5.0
    batch_traces: int = 1000
    per_trace: bool = False


def should_checkpoint(log_size: int, checkpoint_size: int, seconds_since: float,
                      policy: AnchorPolicy) -> bool:
    """Decide whether the log has grown enough, or waited long enough, for a new checkpoint."""
    waiting = log_size - checkpoint_size
    return waiting > 0 and (waiting >= policy.batch_traces or
                            seconds_since >= policy.interval_seconds)


def check_history(chain_latest: Anchor | None, log_size: int,
                  root_at: Callable[[int], bytes]) -> None:
    """Raise HistoryMismatch unless the chain's newest anchor is a root this log had."""
    if chain_latest is None:
        return
    if chain_latest.tree_size > log_size:
        raise HistoryMismatch(
            f"the chain anchors a log of {chain_latest.tree_size} traces but this log holds "
            f"only {log_size}: the log was truncated, or this is not its database")
    if root_at(chain_latest.tree_size) != chain_latest.root:
        raise HistoryMismatch(
            f"the chain's root at tree size {chain_latest.tree_size} differs from this log's: "
            f"the log was altered, or this is not its database")


@dataclass
class StepResult:
    log_size: int
    checkpointed: int | None = None
    anchored: int | None = None
    leaves_anchored: int = 0
    chain_down: bool = False


class Anchorer:
    """One worker per log: only it signs checkpoints and sends anchoring transactions."""

    def __init__(self, db: Database, chain: ChainClient, contract: str,
                 signer: CheckpointSigner, origin: str, policy: AnchorPolicy) -> None:
        self.db = db
        self.chain = chain
        self.contract = contract
        self.signer = signer
        self.origin = origin
        self.policy = policy
        self.tree = ledger.LogTree()
        self._checked = False
        self._last_checkpoint_at = 0.0
        self._chain_was_down = False
        # A development node killed mid-interval restarts from its last dump, without the
        # newest blocks: after every outage (and at start) the chain is asked what it holds.
        self._recount = True

    def check_chain(self) -> None:
        """Once per run, before the first anchor: our contract, and a history that matches."""
        self.chain.check_contract(self.contract)
        with self.db.session() as session:
            size = self.tree.sync(session)
        check_history(self.chain.latest_anchor(), size, self.tree.root)
        self._checked = True
        log.info("chain checked", extra={"event": "chain_checked", "contract": self.contract,
                                         "log_size": size})

    def step(self) -> StepResult:
        """Checkpoint if due, then anchor what waits; chain outages are reported, not raised."""
        result = StepResult(log_size=0)
        outage: ChainUnavailable | None = None
        if not self._checked:
            # Check the history before signing anything, so a tampered log is never vouched
            # for; if the chain is down, keep checkpointing and check once it is back.
            try:
                self.check_chain()
            except ChainUnavailable as exc:
                outage = exc
        with self.db.session() as session:
            result.log_size = self.tree.sync(session)
            latest = session.scalar(sa.select(sa.func.max(CheckpointRow.tree_size))) or 0
            since = time.monotonic() - self._last_checkpoint_at
            if should_checkpoint(result.log_size, latest, since, self.policy):
                signed = ledger.make_checkpoint(session, self.tree, self.signer, self.origin)
                if signed is not None:
                    result.checkpointed = signed.checkpoint.tree_size
                    self._last_checkpoint_at = time.monotonic()
        if outage is None:
            try:
                result.anchored = self._anchor_latest_checkpoint()
                if self.policy.per_trace:
                    result.leaves_anchored = self._anchor_leaves(result.log_size)
            except ChainUnavailable as exc:
                outage = exc
        self._report_chain(result, outage)
        return result

    def _report_chain(self, result: StepResult, outage: ChainUnavailable | None) -> None:
        """Log an outage once when it starts and once when it ends."""
        result.chain_down = outage is not None
        if outage is not None and not self._chain_was_down:
            log.warning("chain unavailable; traces are kept and anchored when it returns",
                        extra={"event": "chain_down", "reason": str(outage)})
        elif outage is None and self._chain_was_down:
            log.info("chain is back", extra={"event": "chain_up"})
        self._chain_was_down = outage is not None
        self._recount = self._recount or outage is not None

    def _anchor_latest_checkpoint(self) -> int | None:
        with self.db.session() as session:
            anchored = session.scalar(sa.select(sa.func.max(AnchorRow.tree_size))) or 0
            if self._recount and anchored:
                on_chain = self.chain.latest_anchor()
                anchored = min(anchored, on_chain.tree_size if on_chain else 0)
                self._recount = False
            pending = session.scalar(
                sa.select(CheckpointRow).where(CheckpointRow.tree_size > anchored)
                .order_by(CheckpointRow.tree_size.desc()).limit(1))
            if pending is None:
                return None
            size, root = pending.tree_size, bytes(pending.root)
        # Only the newest checkpoint is sent: it covers every earlier one (the log only grows).
        on_chain = self.chain.latest_anchor()
        if on_chain is not None and on_chain.tree_size >= size:
            # A transaction that was mined but whose receipt we lost: adopt it, do not resend.
            check_history(on_chain, self.tree.tree.size, self.tree.root)
            tx_hash, block, index = "", 0, on_chain.index
            if on_chain.tree_size != size:
                return None
        else:
            receipt = self.chain.anchor(size, root)
            tx_hash, block, index = receipt.tx_hash, receipt.block_number, receipt.index
        with self.db.session() as session:
            # merge: a checkpoint the chain lost and got again keeps one row, the newer one.
            session.merge(AnchorRow(tree_size=size, root=root, chain_index=index,
                                    tx_hash=tx_hash, block_number=block, anchored_at=utcnow()))
        log.info("anchored", extra={"event": "anchored", "tree_size": size, "tx": tx_hash})
        return size

    def _anchor_leaves(self, log_size: int) -> int:
        with self.db.session() as session:
            done = session.scalar(sa.select(sa.func.max(LeafAnchorRow.seq)))
            start = 0 if done is None else done + 1
            rows = session.execute(
                sa.select(TraceRow.seq, TraceRow.leaf_hash).where(TraceRow.seq >= start)
                .order_by(TraceRow.seq).limit(LEAVES_PER_STEP)).all()
        count = 0
        for seq, leaf in rows:
            receipt = self.chain.anchor_leaf(seq, bytes(leaf))
            with self.db.session() as session:
                session.add(LeafAnchorRow(seq=seq, tx_hash=receipt.tx_hash,
                                          block_number=receipt.block_number))
            count += 1
        return count

    def run(self, stop: Callable[[], bool], tick: float = 0.2,
            on_step: Callable[[StepResult], None] | None = None) -> None:
        """Step until asked to stop; a history mismatch or a wrong contract ends the run."""
        backoff = tick
        while not stop():
            result = self.step()
            if on_step is not None:
                on_step(result)
            backoff = min(backoff * 2, 5.0) if result.chain_down else tick
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not stop():
                time.sleep(min(tick, backoff))
