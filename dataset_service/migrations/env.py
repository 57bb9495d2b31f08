"""Alembic environment of the dataset service's tables."""

from alembic import context

from dataset_service.models import Base
from vre.db import run_migrations

run_migrations(context, Base.metadata)
