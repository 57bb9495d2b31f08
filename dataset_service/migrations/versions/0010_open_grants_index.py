"""An index of the open grants alone: the compute agent reads them every few seconds, and
without it each read went through every grant ever made.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OPEN = sa.text("ended_at IS NULL")


def upgrade() -> None:
    op.create_index("ix_grants_open", "grants", ["created_at"], postgresql_where=OPEN,
                    sqlite_where=OPEN)


def downgrade() -> None:
    op.drop_index("ix_grants_open", table_name="grants")
