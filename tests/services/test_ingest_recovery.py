"""A killed ingestion leaves no debris: an ingestion process is really killed (SIGKILL) between
naming a batch's blobs and committing their rows, and the next start of the service finds the
run's honest counts, removes its staged copies, its journal and the blobs without rows, and
leaves a run that another process is still doing alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from dataset_service.demo import DemoSpec, generate_demo_data
from dataset_service.dicom import DeidPolicy
from dataset_service.ingest import Ingestor
from dataset_service.models import IngestRun, Instance, Project, Study
from dataset_service.repository import Repository
from vre.config import Config, to_env
from vre.db import Database

SPEC = DemoSpec(seed=31, subjects=4, studies_per_subject=(1, 1), slices_per_series=(3, 4))

# An ingestion in a process of its own, one study a batch (so one commit a study), that
# stops at its `stop_at`-th batch: killing itself there (its blobs named, its rows not in),
# or waiting there, outside any lock, until the file `go` appears.
INGEST = """
import os, signal, sys, time
from pathlib import Path
from dataset_service import ingest
from dataset_service.dicom import DeidPolicy
from dataset_service.ingest import Ingestor
from dataset_service.repository import Repository
from vre.config import load_config
from vre.db import Database

project, source, how, stop_at, signals = sys.argv[1:6]
config = load_config()
db = Database.for_service(config, "dataset_service", "dataset_service:migrations")
ingest.BATCH_FILES = 1
batches = 0
if how == "kill":
    record = Ingestor._record_studies

    def record_or_die(self, *args, **kwargs):
        global batches
        batches += 1
        if batches == int(stop_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return record(self, *args, **kwargs)

    Ingestor._record_studies = record_or_die
else:
    store = Ingestor._store_and_record

    def wait_then_store(self, *args, **kwargs):
        global batches
        batches += 1
        if batches == int(stop_at):
            Path(signals, "waiting").touch()
            while not Path(signals, "go").exists():
                time.sleep(0.05)
        return store(self, *args, **kwargs)

    Ingestor._store_and_record = wait_then_store
ingestor = Ingestor(db, Repository(config.repository_path), DeidPolicy(), workers=1)
run_id = ingestor.start(project, Path(source), "steward-1")
Path(signals, "run").write_text(run_id)
ingestor.run(run_id)
"""


def ingest_in_a_process(
    config: Config, project: str, source: Path, how: str, stop_at: int, signals: Path
) -> subprocess.Popen:
    signals.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", INGEST, project, str(source), how, str(stop_at), str(signals)],
        env={**os.environ, **to_env(config)},
    )


def make_project(db: Database) -> str:
    with db.session() as session:
        project = Project(name="lung", title="Lung", created_by="steward-1")
        session.add(project)
        session.flush()
        return project.id


def blobs(config: Config) -> set[str]:
    root = config.repository_path / "blobs"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def rows(db: Database) -> tuple[set[str], int]:
    with db.session() as session:
        return (
            set(session.scalars(sa.select(Instance.sha256))),
            session.scalar(sa.select(sa.func.count()).select_from(Study)),
        )


def the_run(db: Database, run_id: str) -> IngestRun:
    with db.session() as session:
        return session.get(IngestRun, run_id)


def test_a_killed_ingestion_is_recovered_at_the_next_start(
    make_app: Callable[[str], Flask], dataset_db: Database, config: Config, tmp_path: Path
) -> None:
    db = dataset_db
    project = make_project(db)
    summary = generate_demo_data(tmp_path / "in", SPEC)
    killed = ingest_in_a_process(config, project, tmp_path / "in", "kill", 3, tmp_path / "s")
    assert killed.wait(timeout=300) == -signal.SIGKILL
    run_id = (tmp_path / "s" / "run").read_text()
    stored, studies = rows(db)
    assert studies == 2, "two batches committed before the kill"
    # The debris a kill leaves: the third batch's blobs without rows, the staged copies of
    # the studies still to come, its journal, and a run that still says it is running.
    assert blobs(config) > stored
    staging = config.repository_path / "staging"
    assert any((staging / f"ingest-{run_id}").iterdir())
    run = the_run(db, run_id)
    assert run.state == "running"
    assert run.counts["studies_ingested"] == studies, "the run says what committed"

    make_app("dataset_service")  # the next start of the service

    assert blobs(config) == stored, "no blob without its row"
    assert [p.name for p in staging.iterdir() if not p.name.startswith(".")] == []
    run = the_run(db, run_id)
    assert run.state == "interrupted" and run.finished_at is not None
    assert run.counts["studies_ingested"] == studies
    again = Ingestor(db, Repository(config.repository_path), DeidPolicy(), workers=1)
    report = again.run(again.start(project, tmp_path / "in", "steward-1"))
    assert report.studies_skipped == studies
    assert rows(db)[1] == len(summary.study_uids)
    assert blobs(config) == rows(db)[0]


def test_recovery_leaves_a_run_of_another_process_alone(
    dataset_db: Database, config: Config, tmp_path: Path
) -> None:
    db = dataset_db
    project = make_project(db)
    summary = generate_demo_data(tmp_path / "in", SPEC)
    signals = tmp_path / "s"
    live = ingest_in_a_process(config, project, tmp_path / "in", "wait", 2, signals)
    try:
        while not (signals / "waiting").exists():
            assert live.poll() is None, "the ingestion process ended early"
            time.sleep(0.05)
        run_id = (signals / "run").read_text()
        area = config.repository_path / "staging" / f"ingest-{run_id}"
        staged = sorted(area.iterdir())
        assert staged

        Ingestor(db, Repository(config.repository_path), DeidPolicy()).recover()

        assert the_run(db, run_id).state == "running"
        assert sorted(area.iterdir()) == staged
    finally:
        (signals / "go").touch()
        assert live.wait(timeout=300) == 0
    run = the_run(db, run_id)
    assert run.state == "finished"
    assert run.counts["studies_ingested"] == rows(db)[1] == len(summary.study_uids)
    assert blobs(config) == rows(db)[0]
