"""Accounts mirrored from an OIDC provider, and the provider's tokens per browser session.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("identity_provider", sa.String(255), nullable=False,
                                   server_default="local"))
        batch.add_column(sa.Column("external_subject", sa.String(255)))
        batch.add_column(sa.Column("groups", sa.JSON, nullable=False,
                                   server_default=sa.text("'[]'")))
        batch.create_unique_constraint("uq_users_identity_provider",
                                       ["identity_provider", "external_subject"])
    op.create_table(
        "provider_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("tokens", sa.Text, nullable=False),
        sa.Column("access_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refresh_expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provider_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_provider_sessions_user_id_users"),
    )
    op.create_index("ix_provider_sessions_user_id", "provider_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_provider_sessions_user_id", table_name="provider_sessions")
    op.drop_table("provider_sessions")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_identity_provider", type_="unique")
        batch.drop_column("groups")
        batch.drop_column("external_subject")
        batch.drop_column("identity_provider")
