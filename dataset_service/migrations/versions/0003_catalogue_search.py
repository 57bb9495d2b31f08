"""catalogue search: the catalogue and its facets; a tsvector and GIN index on PostgreSQL,
an FTS5 table on SQLite

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # The weighted document is a tsvector on PostgreSQL; SQLite keeps an unused TEXT column
    # so the one model fits both (FTS5 holds the text there).
    document_type = postgresql.TSVECTOR() if dialect == "postgresql" else sa.Text()
    op.create_table(
        "catalogue",
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sort_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("license_id", sa.String(length=64), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subjects", sa.Integer(), nullable=False),
        sa.Column("studies", sa.Integer(), nullable=False),
        sa.Column("document", document_type, nullable=True),
        sa.PrimaryKeyConstraint("dataset_id", name=op.f("pk_catalogue")),
    )
    op.create_index("ix_catalogue_document", "catalogue", ["document"],
                    postgresql_using="gin", sqlite_where=sa.text("document IS NOT NULL"))
    op.create_index("ix_catalogue_published_at", "catalogue", ["published_at", "dataset_id"])
    op.create_index("ix_catalogue_subjects", "catalogue",
                    ["subjects", "published_at", "dataset_id"])
    op.create_index("ix_catalogue_sort_name", "catalogue", ["sort_name"])

    op.create_table(
        "catalogue_facets",
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.Column("facet", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["catalogue.dataset_id"],
                                name=op.f("fk_catalogue_facets_dataset_id_catalogue")),
        sa.PrimaryKeyConstraint("dataset_id", "facet", "value",
                                name=op.f("pk_catalogue_facets")),
    )
    op.create_index("ix_catalogue_facets_facet_value", "catalogue_facets",
                    ["facet", "value", "dataset_id"])

    if dialect == "sqlite":
        # dataset_id is stored, not indexed; rows are keyed by a rowid derived from it
        # (dataset_service.search.database.fts_rowid).
        op.execute(
            "CREATE VIRTUAL TABLE catalogue_fts USING fts5("
            "dataset_id UNINDEXED, name, keywords, description, "
            "tokenize = 'porter unicode61 remove_diacritics 2')"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE catalogue_fts")
    op.drop_index("ix_catalogue_facets_facet_value", table_name="catalogue_facets")
    op.drop_table("catalogue_facets")
    op.drop_index("ix_catalogue_sort_name", table_name="catalogue")
    op.drop_index("ix_catalogue_subjects", table_name="catalogue")
    op.drop_index("ix_catalogue_published_at", table_name="catalogue")
    op.drop_index("ix_catalogue_document", table_name="catalogue")
    op.drop_table("catalogue")
