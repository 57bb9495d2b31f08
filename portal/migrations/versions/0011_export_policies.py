"""Export policies per project: reviewers per request, the smallest count a table may show,
and what a project may export a month.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_policies",
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("reviewers", sa.Integer()),
        sa.Column("threshold", sa.Integer()),
        sa.Column("files_per_month", sa.Integer()),
        sa.Column("bytes_per_month", sa.BigInteger()),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", name="pk_export_policies"),
    )


def downgrade() -> None:
    op.drop_table("export_policies")
