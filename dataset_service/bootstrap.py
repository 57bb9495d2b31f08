"""First start on one machine: the demo project, its generated studies ingested like any
other folder, and its first steward."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from dataset_service.demo import generate_demo_data
from dataset_service.dicom import DeidPolicy
from dataset_service.dropfolders import check_import_root, locate
from dataset_service.ingest import Ingestor, IngestReport
from dataset_service.models import Project, ProjectMember
from dataset_service.repository import Repository
from vre.config import Config
from vre.db import Database
from vre.services import service

DEMO_PROJECT = "demo"


def demo_folder(config: Config) -> Path:
    """Where the demo data lies: the demo project's drop folder."""
    return locate(config.import_root_path, DEMO_PROJECT)


def load_demo(config: Config, steward_id: str) -> IngestReport | None:
    """Generate the demo data into the 'demo' project's drop folder and ingest it from
    there, once per data dir."""
    demo_dir = demo_folder(config)
    marker = demo_dir / ".ingested"
    if marker.exists():
        return None
    check_import_root(config.import_root_path, config.home, config.repository_path)
    if not (demo_dir / "clinical.csv").is_file():
        generate_demo_data(demo_dir)
    svc = service("dataset_service")
    db = Database.for_service(config, svc.name, svc.migrations)
    try:
        with db.session() as session:
            project = session.scalar(sa.select(Project).where(Project.name == DEMO_PROJECT))
            if project is None:
                project = Project(name=DEMO_PROJECT, title="Demonstration project",
                                  description="Synthetic, de-identified CT and MR studies "
                                              "generated for trying the platform out.",
                                  created_by=steward_id)
                session.add(project)
                session.flush()
                session.add(ProjectMember(project_id=project.id, user_id=steward_id,
                                          role="steward"))
            project_id = project.id
        ingestor = Ingestor(db, Repository(config.repository_path), DeidPolicy(),
                            config.ingest_workers)
        report = ingestor.run(ingestor.start(project_id, Path(demo_dir), steward_id))
    finally:
        db.engine.dispose()
    marker.touch()
    return report
