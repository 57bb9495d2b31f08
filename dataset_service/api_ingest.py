"""Ingestion API: a steward points the service at a folder below the import root; the run
goes on in the background and reports progress and its quarantine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app
from pydantic import BaseModel, ConfigDict, Field

from dataset_service.api import find_project, require_project_steward
from dataset_service.ingest import IngestError, Ingestor, IngestReport, resolve_source
from dataset_service.models import IngestRun, QuarantineEntry
from vre.api import current_principal, endpoint
from vre.errors import ApiError, NotFound
from vre.web import config_of, db_of

bp = Blueprint("ingest_api", __name__, url_prefix="/api/v1")


class IngestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096, description="folder below the import root")
    project: str = Field(min_length=1, max_length=64, description="project name or id")


class QuarantineOut(BaseModel):
    path: str
    study_uid: str | None
    reason: str
    message: str


class IngestRunOut(BaseModel):
    id: str
    project_id: str
    source: str
    state: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    quarantine: list[QuarantineOut]


def _run_out(session: Any, run: IngestRun, live: IngestReport | None) -> IngestRunOut:
    entries = session.scalars(sa.select(QuarantineEntry).where(
        QuarantineEntry.ingest_id == run.id).order_by(QuarantineEntry.id).limit(10_000))
    counts = live.counts() if live is not None and run.state == "running" else run.counts
    return IngestRunOut(
        id=run.id, project_id=run.project_id, source=run.source, state=run.state,
        started_by=run.started_by, started_at=run.started_at, finished_at=run.finished_at,
        counts=counts or {}, quarantine=[QuarantineOut.model_validate(e, from_attributes=True)
                                         for e in entries])


@bp.post("/ingest")
@endpoint("Ingest a folder of DICOM studies into a project", body=IngestIn,
          response=IngestRunOut, status=202, roles=["steward", "admin", "service"],
          tags=["ingestion"])
def start_ingest(body: IngestIn) -> IngestRunOut:
    principal = current_principal()
    assert principal is not None
    try:
        source = resolve_source(body.path, config_of().import_root_path)
    except IngestError as exc:
        status = 404 if exc.code == "source_not_found" else 403
        raise ApiError(str(exc), code=exc.code, field="path", status=status) from None
    ingestor: Ingestor = current_app.extensions["dataset.ingestor"]
    with db_of().session() as session:
        project = find_project(session, body.project)
        require_project_steward(session, principal, project.id)
        project_id = project.id
    run_id = ingestor.start(project_id, source, principal.subject)
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
        if run is None:
            raise NotFound(f"no ingestion run {run_id!r}", field="run_id")
        require_project_steward(session, principal, run.project_id)
        return _run_out(session, run, current_app.extensions["dataset.live_ingests"].get(run_id))
