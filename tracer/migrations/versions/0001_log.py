"""The append-only trace log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_head"),
    )
    op.bulk_insert(sa.table("log_head", sa.column("id"), sa.column("size")),
                   [{"id": 1, "size": 0}])
    op.create_table(
        "traces",
        sa.Column("seq", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("update", sa.String(32)),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_traces"),
        sa.UniqueConstraint("id", name="uq_traces_id"),
    )
    op.create_index("ix_traces_recorded_at", "traces", ["recorded_at"])
    op.create_index("ix_traces_actor", "traces", ["actor", "seq"])
    op.create_index("ix_traces_action", "traces", ["action", "seq"])
    op.create_table(
        "trace_datasets",
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "seq", name="pk_trace_datasets"),
    )


def downgrade() -> None:
    op.drop_table("trace_datasets")
    op.drop_table("traces")
    op.drop_table("log_head")
