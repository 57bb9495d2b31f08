"""The log as the tracer serves it: the Merkle tree kept in memory and caught up from the
database, signed checkpoints of it, and proofs against them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tracer.checkpoints import Checkpoint, CheckpointSigner
from tracer.merkle import MerkleTree
from tracer.models import AnchorRow, CheckpointRow, TraceRow
from vre.db import utcnow

_SYNC_CHUNK = 50_000


class LogTree:
    """The Merkle tree over the stored leaves; the database stays the truth, this is a cache."""

    def __init__(self) -> None:
        self.tree = MerkleTree()
        self._lock = threading.Lock()

    def sync(self, session: Session) -> int:
        """Append the leaves committed since the last sync; returns the tree size."""
        with self._lock:
            while True:
                start = self.tree.size
                rows = session.execute(
                    sa.select(TraceRow.seq, TraceRow.leaf_hash).where(TraceRow.seq >= start)
                    .order_by(TraceRow.seq).limit(_SYNC_CHUNK)).all()
                for seq, leaf in rows:
                    if seq != self.tree.size:
                        return self.tree.size  # a gap: the log holds nothing past it yet
                    self.tree.append(bytes(leaf))
                if len(rows) < _SYNC_CHUNK:
                    return self.tree.size

    def root(self, size: int) -> bytes:
        with self._lock:
            return self.tree.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return self.tree.inclusion_proof(index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        with self._lock:
            return self.tree.consistency_proof(size1, size2)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint, its signature, and where it is anchored if it is."""

    checkpoint: Checkpoint
    signature: bytes
    key_id: str
    anchor: AnchorRow | None = None


def _signed(row: CheckpointRow, origin: str, anchor: AnchorRow | None) -> SignedCheckpoint:
    checkpoint = Checkpoint(origin, row.tree_size, bytes(row.root), _aware(row.timestamp))
    return SignedCheckpoint(checkpoint, bytes(row.signature), row.key_id, anchor)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; all stored times are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def make_checkpoint(session: Session, tree: LogTree, signer: CheckpointSigner,
                    origin: str) -> SignedCheckpoint | None:
    """Sign and store a checkpoint of the log as it is now, unless nothing new was added."""
    size = tree.sync(session)
    latest = session.scalar(sa.select(sa.func.max(CheckpointRow.tree_size)))
    if size == 0 or (latest is not None and latest >= size):
        return None
    checkpoint = Checkpoint(origin, size, tree.root(size), utcnow().replace(microsecond=0))
    signature = signer.sign(checkpoint)
    session.add(CheckpointRow(tree_size=size, root=checkpoint.root,
                              timestamp=checkpoint.timestamp, signature=signature,
                              key_id=signer.key_id))
    return SignedCheckpoint(checkpoint, signature, signer.key_id)


def checkpoints(session: Session, origin: str, *, before: int | None = None,
                limit: int = 100) -> list[SignedCheckpoint]:
    """Newest first, with their anchors."""
    stmt = sa.select(CheckpointRow, AnchorRow).outerjoin(
        AnchorRow, AnchorRow.tree_size == CheckpointRow.tree_size)
    if before is not None:
        stmt = stmt.where(CheckpointRow.tree_size < before)
    stmt = stmt.order_by(CheckpointRow.tree_size.desc()).limit(limit)
    return [_signed(cp, origin, anchor) for cp, anchor in session.execute(stmt)]


def checkpoint_at(session: Session, origin: str, size: int) -> SignedCheckpoint | None:
    found = checkpoints(session, origin, before=size + 1, limit=1)
    return found[0] if found and found[0].checkpoint.tree_size == size else None


def latest_checkpoint(session: Session, origin: str) -> SignedCheckpoint | None:
    found = checkpoints(session, origin, limit=1)
    return found[0] if found else None
