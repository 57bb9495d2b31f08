"""Exports: requests to take results out, their files pinned by SHA-256 with what the
automatic checks found, the reviewers' votes, and the notifications people get.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "export_requests",
        sa.Column("id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_export_requests"),
        sa.Column("owner_id", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("project", sa.String(64)),
        sa.Column("reviewers_needed", sa.Integer(), nullable=False),
        sa.Column("datasets", sa.JSON(), nullable=False),
        sa.Column("jobs", sa.JSON(), nullable=False),
        sa.Column("workload_id", sa.String(64)),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.Column("submitted_at", _MOMENT),
        sa.Column("decided_at", _MOMENT),
        sa.Column("released_at", _MOMENT),
        sa.CheckConstraint("state IN ('draft', 'submitted', 'checking', 'in_review', "
                           "'changes_requested', 'approved', 'rejected', 'released', "
                           "'withdrawn')", name="ck_export_requests_state"),
    )
    op.create_index("ix_export_requests_owner_id", "export_requests", ["owner_id"])
    op.create_index("ix_export_requests_state", "export_requests", ["state"])
    op.create_index("ix_export_requests_project", "export_requests", ["project"])
    op.create_table(
        "export_files",
        sa.Column("id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_export_files"),
        sa.Column("request_id", sa.String(64), sa.ForeignKey(
            "export_requests.id", ondelete="CASCADE",
            name="fk_export_files_request_id_export_requests"), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("decision", sa.String(24)),
        sa.Column("job_id", sa.String(64)),
    )
    op.create_index("ix_export_files_request_id", "export_files", ["request_id"])
    op.create_table(
        "export_votes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_export_votes"),
        sa.Column("request_id", sa.String(64), sa.ForeignKey(
            "export_requests.id", ondelete="CASCADE",
            name="fk_export_votes_request_id_export_requests"), nullable=False),
        sa.Column("file_id", sa.String(64), sa.ForeignKey(
            "export_files.id", ondelete="CASCADE",
            name="fk_export_votes_file_id_export_files"), nullable=False),
        sa.Column("reviewer_id", sa.String(128), nullable=False),
        sa.Column("vote", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.UniqueConstraint("file_id", "reviewer_id",
                            name="uq_export_votes_file_id_reviewer_id"),
    )
    op.create_index("ix_export_votes_request_id", "export_votes", ["request_id"])
    op.create_index("ix_export_votes_file_id", "export_votes", ["file_id"])
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("text", sa.String(500), nullable=False),
        sa.Column("link", sa.String(500), nullable=False),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.Column("read_at", _MOMENT),
    )
    op.create_index("ix_notifications_user_id", "notifications", ["user_id"])


def downgrade() -> None:
    for table in ("notifications", "export_votes", "export_files", "export_requests"):
        op.drop_table(table)
