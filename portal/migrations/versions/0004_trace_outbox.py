"""The trace outbox: the trace of each of the portal's actions is written in the action's own
transaction and delivered to the tracer after commit.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trace_outbox",
        sa.Column("position", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trace_id", sa.String(length=36), nullable=False),
        sa.Column("trace", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claim", sa.String(length=36), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_trace_outbox")),
        sa.UniqueConstraint("trace_id", name=op.f("uq_trace_outbox_trace_id")),
    )
    op.create_index(op.f("ix_trace_outbox_due_at"), "trace_outbox", ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_trace_outbox_due_at"), table_name="trace_outbox")
    op.drop_table("trace_outbox")
