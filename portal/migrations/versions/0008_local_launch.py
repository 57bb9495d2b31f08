"""Applications can be local: what the local backend runs for each (a desktop's session by
name), beside the image a cluster runs. Desktop applications already defined get the
platform's desktop session, which is what they ran before.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("applications") as batch:
        batch.add_column(sa.Column("local_command", sa.JSON(), nullable=False,
                                   server_default="[]"))
    op.execute("UPDATE applications SET local_command = '[\"session:desktop\"]' "
               "WHERE kind = 'desktop'")


def downgrade() -> None:
    with op.batch_alter_table("applications") as batch:
        batch.drop_column("local_command")
