"""The subject's sex and age as each study's headers gave them, so that a pseudonym that
comes back with other demographics is reported rather than merged.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("patient_sex", sa.String(length=1), nullable=True))
        batch.add_column(sa.Column("patient_age", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("patient_age")
        batch.drop_column("patient_sex")
