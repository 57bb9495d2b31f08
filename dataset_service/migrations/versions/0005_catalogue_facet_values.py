"""Each catalogue entry keeps its facet values, so PostgreSQL counts a search's facets from
its matches alone (no join with catalogue_facets).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    values_type = postgresql.ARRAY(sa.Text()) if postgres else sa.JSON()
    with op.batch_alter_table("catalogue") as batch:
        batch.add_column(sa.Column("facet_values", values_type, nullable=True))
    if postgres:
        op.execute("UPDATE catalogue SET facet_values = ARRAY(SELECT f.facet || '=' || f.value "
                   "FROM catalogue_facets f WHERE f.dataset_id = catalogue.dataset_id)")
    else:
        op.execute("UPDATE catalogue SET facet_values = (SELECT json_group_array("
                   "f.facet || '=' || f.value) FROM catalogue_facets f "
                   "WHERE f.dataset_id = catalogue.dataset_id)")


def downgrade() -> None:
    with op.batch_alter_table("catalogue") as batch:
        batch.drop_column("facet_values")
