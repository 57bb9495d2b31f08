"""Desktop lifecycle: a moving expiry, the VNC proxy's activity reports, the idle warning,
why (and by whom) a workload was stopped, and when its owner took it off their list.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_MOMENTS = ("expires_at", "viewer_seen_at", "input_at", "idle_warning_at", "culls_at",
            "forgotten_at")


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        for name in _MOMENTS:
            batch.add_column(sa.Column(name, sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("stop_reason", sa.Text()))
        batch.add_column(sa.Column("stopped_by", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        for name in ("stopped_by", "stop_reason", *reversed(_MOMENTS)):
            batch.drop_column(name)
