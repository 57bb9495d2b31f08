"""Alembic environment of the tracer's tables."""

from alembic import context

from tracer.models import Base
from vre.db import run_migrations

run_migrations(context, Base.metadata)
