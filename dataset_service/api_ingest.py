"""Ingestion API: a steward points the service at a folder in their project's drop folder;
the run goes on in the background and reports progress and its quarantine, with paths as
the steward knows them (relative to the drop folder)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app
from pydantic import BaseModel, ConfigDict, Field

from dataset_service import dropfolders
from dataset_service.api import find_project, may_see_project, require_project_steward
from dataset_service.ingest import Ingestor, IngestReport
from dataset_service.models import IngestRun, QuarantineEntry
from vre.api import current_principal, endpoint
from vre.errors import ApiError, NotFound, ServiceUnavailable
from vre.web import config_of, db_of

bp = Blueprint("ingest_api", __name__, url_prefix="/api/v1")


class IngestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096,
                      description="folder in the project's drop folder, relative to it")
    project: str = Field(min_length=1, max_length=64, description="project name or id")


class QuarantineOut(BaseModel):
    path: str = Field(description="the file, relative to the project's drop folder")
    study_uid: str | None
    reason: str
    message: str


class IngestRunOut(BaseModel):
    id: str
    project_id: str
    source: str = Field(description="the folder, relative to the project's drop folder")
    state: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    quarantine: list[QuarantineOut]


def _drop_folder(project_name: str) -> Path:
    return dropfolders.locate(config_of().import_root_path, project_name)


def _run_out(session: Any, run: IngestRun, live: IngestReport | None) -> IngestRunOut:
    entries = session.scalars(sa.select(QuarantineEntry).where(
        QuarantineEntry.ingest_id == run.id).order_by(QuarantineEntry.id).limit(10_000))
    counts = live.counts() if live is not None and run.state == "running" else run.counts
    # Stored relative to the drop folder already (see Ingestor.start).
    return IngestRunOut(
        id=run.id, project_id=run.project_id, source=run.source,
        state=run.state, started_by=run.started_by, started_at=run.started_at,
        finished_at=run.finished_at, counts=counts or {},
        quarantine=[QuarantineOut(path=e.path, study_uid=e.study_uid, reason=e.reason,
                                  message=e.message) for e in entries])


def _source(path: str, project_name: str) -> Path:
    """The folder to ingest, inside the project's drop folder; 404 whether it is missing,
    outside or unreadable, 422 for a path no file system holds."""
    root = config_of().import_root_path
    if not root.is_dir():
        raise ServiceUnavailable(
            f"ingestion is not set up: the import root is missing; "
            f"{dropfolders.IMPORT_ROOT_SETTING} moves it", code="import_root_unavailable")
    try:
        return dropfolders.place(path, _drop_folder(project_name))
    except dropfolders.DropFolderError as exc:
        status = 404 if exc.code == "source_not_found" else 422
        raise ApiError(exc.message, code=exc.code, field="path", status=status) from None


@bp.post("/ingest")
@endpoint("Ingest a folder of DICOM studies from the project's drop folder", body=IngestIn,
          response=IngestRunOut, status=202, roles=["steward", "admin", "service"],
          tags=["ingestion"])
def start_ingest(body: IngestIn) -> IngestRunOut:
    principal = current_principal()
    assert principal is not None
    ingestor: Ingestor = current_app.extensions["dataset.ingestor"]
    with db_of().session() as session:
        project = find_project(session, body.project)
        require_project_steward(session, principal, project.id)
        project_id, project_name = project.id, project.name
    # Only a steward of the project learns anything of its drop folder.
    source = _source(body.path, project_name)
    run_id = ingestor.start(project_id, source, principal.subject, _drop_folder(project_name))
    live = IngestReport()
    current_app.extensions["dataset.live_ingests"][run_id] = live

    def work() -> None:
        report = ingestor.run(run_id, progress=lambda r: vars(live).update(vars(r)))
        vars(live).update(vars(report))

    executor: ThreadPoolExecutor = current_app.extensions["dataset.ingest_executor"]
    executor.submit(work)
    with db_of().session() as session:
        return _run_out(session, session.get(IngestRun, run_id), live)


@bp.get("/ingest/<run_id>")
@endpoint("An ingestion run: state, progress and quarantine report", response=IngestRunOut,
          roles=["steward", "admin", "service"], tags=["ingestion"])
def get_ingest(run_id: str) -> IngestRunOut:
    principal = current_principal()
    assert principal is not None
    with db_of().session() as session:
        run = session.get(IngestRun, run_id)
        if run is None or not may_see_project(session, principal, run.project_id):
            raise NotFound(f"no ingestion run {run_id!r}", field="run_id")
        require_project_steward(session, principal, run.project_id)
        return _run_out(session, run, current_app.extensions["dataset.live_ingests"].get(run_id))
