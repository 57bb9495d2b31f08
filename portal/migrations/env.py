"""Alembic environment of the portal's tables."""

from alembic import context

from portal.models import Base
from vre.db import run_migrations

run_migrations(context, Base.metadata)
