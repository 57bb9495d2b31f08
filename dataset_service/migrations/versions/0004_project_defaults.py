"""Per-project defaults for new datasets (licence and contact).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("default_license_id", 64),
    ("default_license_url", 300),
    ("default_contact_name", 200),
    ("default_contact_email", 254),
)


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        for name, length in COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length)))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
