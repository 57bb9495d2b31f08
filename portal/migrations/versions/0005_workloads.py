"""Workloads (desktops and jobs) the compute agent starts, watches and re-adopts.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workloads",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("application", sa.String(64), nullable=False),
        sa.Column("flavor", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("datasets", sa.JSON, nullable=False),
        sa.Column("grant_id", sa.String(64)),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("backend_state", sa.JSON, nullable=False),
        sa.Column("exit_status", sa.Integer),
        sa.Column("cpu_seconds", sa.Float, nullable=False),
        sa.Column("memory_peak_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_workloads"),
        sa.CheckConstraint("kind IN ('desktop', 'job')", name="ck_workloads_kind"),
        sa.CheckConstraint("state IN ('starting', 'running', 'stopping', 'stopped', 'failed')",
                           name="ck_workloads_state"),
    )
    op.create_index("ix_workloads_owner_id", "workloads", ["owner_id"])
    op.create_index("ix_workloads_state", "workloads", ["state"])


def downgrade() -> None:
    op.drop_table("workloads")
