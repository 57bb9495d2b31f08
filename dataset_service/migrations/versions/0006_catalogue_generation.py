"""The catalogue's generation: a counter every catalogue change moves on, which cached
searches are keyed by.

Revision ID: 0006
Revises: 0005
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "catalogue_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_generation")),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0, "changed_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("catalogue_generation")
