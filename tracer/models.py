"""The tracer's append-only tables: the log of traces and an index of them by dataset."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vre.db import NAMING_CONVENTION, UtcDateTime


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class LogHead(Base):
    """One row holding the log's size: updating it serialises appends and hands out seqs."""

    __tablename__ = "log_head"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)


class TraceRow(Base):
    """One trace at its position (seq) in the log, with the exact bytes that were hashed."""

    __tablename__ = "traces"
    __table_args__ = (
        sa.Index("ix_traces_actor", "actor", "seq"),
        sa.Index("ix_traces_action", "action", "seq"),
        sa.Index("ix_traces_recorded_at", "recorded_at"),
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(sa.String(128))
    action: Mapped[str] = mapped_column(sa.String(32))
    update: Mapped[str | None] = mapped_column(sa.String(32))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32))


class TraceDataset(Base):
    """Which traces name which dataset: lets a dataset's history be read by index."""

    __tablename__ = "trace_datasets"
    dataset_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)


class CheckpointRow(Base):
    """A checkpoint the tracer signed: the root of the log at one size."""

    __tablename__ = "checkpoints"
    tree_size: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime)
    signature: Mapped[bytes] = mapped_column(sa.LargeBinary(64))
    key_id: Mapped[str] = mapped_column(sa.String(16))


class AnchorRow(Base):
    """A checkpoint whose root is on the chain, with the transaction that put it there."""

    __tablename__ = "anchors"
    tree_size: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    chain_index: Mapped[int] = mapped_column(sa.BigInteger)
    tx_hash: Mapped[str] = mapped_column(sa.String(66))
    block_number: Mapped[int] = mapped_column(sa.BigInteger)
    anchored_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LeafAnchorRow(Base):
    """Per-trace mode: a leaf hash anchored in a transaction of its own."""

    __tablename__ = "leaf_anchors"
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    tx_hash: Mapped[str] = mapped_column(sa.String(66))
    block_number: Mapped[int] = mapped_column(sa.BigInteger)


class PublishedDataset(Base):
    """Datasets whose publication is in the log: their history is readable by anyone."""

    __tablename__ = "published_datasets"
    dataset_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
