"""Which datasets' histories are public (their PUBLISH trace is in the log).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "published_datasets",
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", name="pk_published_datasets"),
    )
    op.execute(
        "INSERT INTO published_datasets (dataset_id, seq) "
        "SELECT d.dataset_id, MIN(d.seq) FROM trace_datasets d JOIN traces t ON t.seq = d.seq "
        "WHERE t.action = 'UPDATE_DATASET' AND t.\"update\" = 'PUBLISH' GROUP BY d.dataset_id")


def downgrade() -> None:
    op.drop_table("published_datasets")
