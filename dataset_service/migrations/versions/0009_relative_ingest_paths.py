"""Ingestion runs and their quarantine keep paths relative to the project's drop folder, not
where the files lay on the host: rows written before are rewritten so.

The drop folder of a run is `<import root>/<project name>`; the import root is
configuration, not data, so a stored folder is cut at the component named like its project
(the one under a folder named "import", the default import root, where there are several).
A run from elsewhere (the demo data, an operator's folder) is stored relative to its own
folder. A file outside the base keeps its name only. The host paths are gone for good, so
going back down changes nothing.

Revision ID: 0009
Revises: 0008
"""

from pathlib import PurePosixPath

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

runs = sa.table("ingest_runs", sa.column("id", sa.String), sa.column("project_id", sa.String),
                sa.column("source", sa.Text))
projects = sa.table("projects", sa.column("id", sa.String), sa.column("name", sa.String))
quarantine = sa.table("quarantine", sa.column("id", sa.Integer),
                      sa.column("ingest_id", sa.String), sa.column("path", sa.Text))


def drop_folder_of(source: PurePosixPath, project: str) -> PurePosixPath:
    """The folder a stored run's paths are made relative to (see the module's docstring)."""
    parts = source.parts
    cuts = [i for i, part in enumerate(parts) if part == project and i > 0]
    under_import = [i for i in cuts if parts[i - 1] == "import"]
    if under_import or cuts:
        return PurePosixPath(*parts[:(under_import or cuts)[0] + 1])
    return source


def relative(path: str, base: PurePosixPath) -> str:
    given = PurePosixPath(path)
    if not given.is_absolute():
        return path  # written relative already
    if given == base:
        return "."
    if base in given.parents:
        return str(given.relative_to(base))
    return given.name


def upgrade() -> None:
    conn = op.get_bind()
    for run_id, source, project in conn.execute(
            sa.select(runs.c.id, runs.c.source, projects.c.name)
            .join(projects, projects.c.id == runs.c.project_id)).all():
        if not PurePosixPath(source).is_absolute():
            continue
        base = drop_folder_of(PurePosixPath(source), project)
        conn.execute(runs.update().where(runs.c.id == run_id)
                     .values(source=relative(source, base)))
        for entry_id, path in conn.execute(sa.select(quarantine.c.id, quarantine.c.path)
                                           .where(quarantine.c.ingest_id == run_id)).all():
            conn.execute(quarantine.update().where(quarantine.c.id == entry_id)
                         .values(path=relative(path, base)))


def downgrade() -> None:
    """Nothing to undo: the paths relative to the drop folder are all that is known."""
