"""An index of the waiting jobs alone, with what their owners' quotas count of them: each
group of submissions reads its owners' waiting jobs, thousands for a researcher with a long
queue, and reads them from the index without the rows.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    op.create_index("ix_workloads_queued", "workloads",
                    ["owner_id", "flavor", "time_limit_seconds"],
                    postgresql_where=QUEUED, sqlite_where=QUEUED)


def downgrade() -> None:
    op.drop_index("ix_workloads_queued", table_name="workloads")
