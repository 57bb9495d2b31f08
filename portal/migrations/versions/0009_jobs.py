"""Batch jobs: a job waits in the queue before it starts and ends succeeded, failed or
cancelled; it has a name, a time limit, the jobs it waits for, the desktop it came from, the
key that makes a repeated submission answer the first one, the GPUs it was given and the hash
of its outputs.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OLD_STATES = "state IN ('starting', 'running', 'stopping', 'stopped', 'failed')"
_NEW_STATES = ("state IN ('queued', 'starting', 'running', 'stopping', 'stopped', 'failed', "
               "'succeeded', 'cancelled')")


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.drop_constraint("ck_workloads_state", type_="check")
        batch.create_check_constraint("ck_workloads_state", _NEW_STATES)
        batch.add_column(sa.Column("name", sa.String(128), nullable=False, server_default=""))
        batch.add_column(sa.Column("parent_id", sa.String(64)))
        batch.add_column(sa.Column("depends_on", sa.JSON(), nullable=False,
                                   server_default="[]"))
        batch.add_column(sa.Column("idempotency_key", sa.String(128)))
        batch.add_column(sa.Column("time_limit_seconds", sa.Integer()))
        batch.add_column(sa.Column("gpu_ids", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("output_hash", sa.String(80)))
        batch.create_unique_constraint("uq_workloads_owner_id_idempotency_key",
                                       ["owner_id", "idempotency_key"])
    op.create_index("ix_workloads_kind_state", "workloads", ["kind", "state"])


def downgrade() -> None:
    op.drop_index("ix_workloads_kind_state", "workloads")
    op.execute("DELETE FROM workloads WHERE kind = 'job'")
    with op.batch_alter_table("workloads") as batch:
        batch.drop_constraint("uq_workloads_owner_id_idempotency_key", type_="unique")
        for name in ("output_hash", "gpu_ids", "time_limit_seconds", "idempotency_key",
                     "depends_on", "parent_id", "name"):
            batch.drop_column(name)
        batch.drop_constraint("ck_workloads_state", type_="check")
        batch.create_check_constraint("ck_workloads_state", _OLD_STATES)
