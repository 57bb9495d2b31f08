"""The application and flavor catalogues, and quotas of users and projects.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _stamps() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("image", sa.String(500), nullable=False),
        sa.Column("image_digest", sa.String(100)),
        sa.Column("command", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_applications"),
        sa.CheckConstraint("kind IN ('desktop', 'batch')", name="ck_applications_kind"),
    )
    op.create_table(
        "flavors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("gpu_model", sa.String(100)),
        sa.Column("max_runtime_minutes", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("allowed_roles", sa.JSON, nullable=False),
        sa.Column("allowed_projects", sa.JSON, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("name", name="pk_flavors"),
        sa.CheckConstraint("cpus > 0 AND memory_mib > 0 AND gpus >= 0 "
                           "AND max_runtime_minutes > 0", name="ck_flavors_sizes"),
    )
    op.create_table(
        "quotas",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("max_desktops", sa.Integer),
        sa.Column("max_jobs", sa.Integer),
        sa.Column("max_gpus", sa.Integer),
        sa.Column("cpu_hours_per_month", sa.Float),
        sa.Column("gpu_hours_per_month", sa.Float),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_quotas"),
        sa.UniqueConstraint("scope", "subject", name="uq_quotas_scope_subject"),
        sa.CheckConstraint("scope IN ('user', 'project')", name="ck_quotas_scope"),
    )


def downgrade() -> None:
    op.drop_table("quotas")
    op.drop_table("flavors")
    op.drop_table("applications")
