"""De-identification at ingestion, from the side of a hostile folder: burned-in text, files
that cannot name their study, values that are not of their VR, pseudonyms that come back as
someone else, and refused values that must never reach a report, a log or the database."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from flask import Flask
from pydicom.uid import generate_uid

from dataset_service.demo import DemoSpec, generate_demo_data
from dataset_service.dicom import DeidPolicy
from dataset_service.ingest import Ingestor
from dataset_service.models import Base, IngestRun, Project, Study, Subject, trace_outbox
from dataset_service.repository import Repository
from tests.helpers import auth, serving
from tracer.client import TracerClient
from vre.config import Config
from vre.db import Database
from vre.service_auth import StaticToken

SPEC = DemoSpec(seed=21, subjects=3, studies_per_subject=(1, 1), slices_per_series=(3, 4))
MARKER = "Johnathan"  # what a hostile file carries where an identifier must not be


@pytest.fixture
def db(dataset_db: Database) -> Database:
    return dataset_db


@pytest.fixture
def project(db: Database) -> str:
    with db.session() as session:
        project = Project(name="lung", title="Lung", created_by="steward-1")
        session.add(project)
        session.flush()
        return project.id


@pytest.fixture
def ingestor(db: Database, config: Config) -> Ingestor:
    return Ingestor(db, Repository(config.repository_path), DeidPolicy(), workers=1)


def studies_in(db: Database) -> set[str]:
    with db.session() as session:
        return set(session.scalars(sa.select(Study.study_uid)))


def study_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "dicom").glob("*/study-*") if p.is_dir())


def rewrite(path: Path, **values: object) -> pydicom.Dataset:
    """Set (or, with None, delete) attributes of one file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_burned_in_annotation_keeps_the_whole_study_out(
    tmp_path: Path, db: Database, project: str, ingestor: Ingestor
) -> None:
    generate_demo_data(tmp_path / "in", SPEC)
    study = study_folders(tmp_path / "in")[0]
    victim = sorted(study.rglob("*.dcm"))[0]
    uid = rewrite(victim, BurnedInAnnotation="YES").StudyInstanceUID
    report = ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    assert uid not in studies_in(db)
    entries = [q for q in report.quarantine if q["study_uid"] == uid]
    assert {(q["reason"], q["message"]) for q in entries if q["path"] == str(victim)} == {
        ("identifying_data", "BurnedInAnnotation")
    }
    assert len(entries) == len(list(study.rglob("*.dcm")))
    assert report.studies_ingested == len(study_folders(tmp_path / "in")) - 1


@pytest.mark.parametrize(
    "missing",
    [("StudyInstanceUID",), ("StudyInstanceUID", "SeriesInstanceUID")],
    ids=["shares-a-series", "shares-a-folder"],
)
def test_a_file_that_cannot_name_its_study_takes_the_whole_study_out(
    tmp_path: Path, db: Database, project: str, ingestor: Ingestor, missing: tuple[str, ...]
) -> None:
    generate_demo_data(tmp_path / "in", SPEC)
    study = study_folders(tmp_path / "in")[0]
    files = sorted(study.rglob("*.dcm"))
    uid = pydicom.dcmread(files[0]).StudyInstanceUID
    rewrite(files[0], **dict.fromkeys(missing))
    report = ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    assert uid not in studies_in(db), "the rest of the study must not go in without it"
    by_path = {q["path"]: q for q in report.quarantine}
    assert by_path[str(files[0])]["reason"] == "missing_uid"
    assert by_path[str(files[0])]["study_uid"] == uid
    for other in files[1:]:
        assert by_path[str(other)]["reason"] == "study_incomplete"
    assert report.studies_ingested == len(study_folders(tmp_path / "in")) - 1


def test_a_stray_text_file_in_a_study_folder_keeps_nothing_out(
    tmp_path: Path, db: Database, project: str, ingestor: Ingestor
) -> None:
    summary = generate_demo_data(tmp_path / "in", SPEC)
    (next(study_folders(tmp_path / "in")[0].glob("series-*")) / "notes.txt").write_text("hi")
    report = ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    assert report.studies_ingested == len(summary.study_uids)
    assert [q["reason"] for q in report.quarantine] == ["not_dicom"]


def copy_study_as_new(source: Path, target: Path, **values: object) -> str:
    """Copy a study folder with fresh UIDs (a new study of the same subject) and `values`
    set in every file; returns the new StudyInstanceUID."""
    study_uid = generate_uid()
    series_uids: dict[str, str] = {}
    for path in sorted(source.rglob("*.dcm")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out)
        ds = pydicom.dcmread(out)
        sop = generate_uid()
        rewrite(
            out,
            StudyInstanceUID=study_uid,
            SOPInstanceUID=sop,
            SeriesInstanceUID=series_uids.setdefault(ds.SeriesInstanceUID, generate_uid()),
            **values,
        )
        ds = pydicom.dcmread(out)
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.save_as(out, enforce_file_format=True)
    return study_uid


def test_a_pseudonym_that_comes_back_with_other_demographics_is_reported_not_merged(
    tmp_path: Path, db: Database, project: str, ingestor: Ingestor
) -> None:
    generate_demo_data(tmp_path / "in", SPEC)
    ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    study = study_folders(tmp_path / "in")[0]
    first = pydicom.dcmread(next(study.rglob("*.dcm")))
    other_sex = "M" if first.PatientSex == "F" else "F"
    age = int(first.PatientAge[:3])
    later = f"{int(first.StudyDate[:4]) + 2}{first.StudyDate[4:]}"
    second = tmp_path / "second"
    changed_sex = copy_study_as_new(study, second / "a", PatientSex=other_sex)
    changed_age = copy_study_as_new(study, second / "b", PatientAge=f"{age + 20:03d}Y")
    grown_up = copy_study_as_new(study, second / "c", StudyDate=later, PatientAge=f"{age + 2:03d}Y")
    report = ingestor.run(ingestor.start(project, second, "steward-1"))
    conflicts = {q["study_uid"]: q for q in report.quarantine if q["reason"] == "subject_conflict"}
    assert set(conflicts) == {changed_sex, changed_age}
    assert "PatientSex" in conflicts[changed_sex]["message"]
    assert "PatientAge" in conflicts[changed_age]["message"]
    assert studies_in(db) >= {grown_up} and not studies_in(db) & set(conflicts)
    with db.session() as session:
        subject = session.scalar(sa.select(Subject).where(Subject.pseudonym == first.PatientID))
        assert subject.sex == first.PatientSex, "the subject on record is left as it was"


def hostile_folder(root: Path) -> Path:
    """A demo folder with identifiers where values of another form belong: a name in a date,
    an age and a time field, and a UID that is a name (its file then names no study)."""
    generate_demo_data(
        root, DemoSpec(seed=22, subjects=6, studies_per_subject=(1, 1), slices_per_series=(10, 12))
    )
    folders = study_folders(root)
    files = [sorted(f.rglob("*.dcm"))[0] for f in folders[:4]]
    rewrite(files[0], StudyDate=f"{MARKER}^Doe")
    rewrite(files[1], PatientAge=MARKER)
    rewrite(files[2], StudyTime=f"{MARKER} 0048291")
    rewrite(files[3], StudyInstanceUID=f"1.2.{MARKER}")
    return root


def everything_stored(db: Database) -> str:
    """Every row of every table of the dataset service, as text."""
    with db.session() as session:
        return "\n".join(
            str(row)
            for table in Base.metadata.sorted_tables
            for row in session.execute(sa.select(table))
        )


@pytest.fixture
def service(make_app: Callable[[str], Flask], token: Callable[..., str]) -> Iterator[Flask]:
    app = make_app("dataset_service")
    with serving(make_app("tracer")) as tracer_url:
        app.extensions["dataset.tracer"] = TracerClient(
            tracer_url, StaticToken(token("service:dataset_service", "service"))
        )
        yield app


def test_a_refused_value_is_never_stored_returned_or_logged(
    service: Flask,
    token: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    home = service.extensions["vre.config"].home
    hostile_folder(home / "import" / "lung" / "hostile")
    headers = auth(token("steward-1", "steward"))
    client = service.test_client()
    assert (
        client.post(
            "/api/v1/projects", headers=headers, json={"name": "lung", "title": "Lung"}
        ).status_code
        == 201
    )
    started = client.post(
        "/api/v1/ingest",
        headers=headers,
        json={"path": str(home / "import" / "lung" / "hostile"), "project": "lung"},
    )
    assert started.status_code == 202, started.get_json()
    service.extensions["dataset.ingest_executor"].submit(lambda: None).result(timeout=120)
    answer = client.get(f"/api/v1/ingest/{started.get_json()['id']}", headers=headers)
    run = answer.get_json()
    assert run["state"] == "finished", run
    assert run["counts"]["studies_quarantined"] == 4
    assert {q["reason"] for q in run["quarantine"]} == {
        "identifying_data",
        "missing_uid",
        "study_incomplete",
    }
    captured = capfd.readouterr()
    for where, text in [
        ("API answer", answer.get_data(as_text=True)),
        ("database", everything_stored(service.extensions["vre.db"])),
        ("logs", "\n".join(r.getMessage() for r in caplog.records)),
        ("stdout and stderr", captured.out + captured.err),
    ]:
        assert MARKER not in text, f"a refused value reached the {where}"


def test_each_batch_that_enters_is_traced_with_its_study_hashes(
    platform: tuple[Flask, TracerClient],
) -> None:
    service, auditor = platform
    traces = list(auditor.query(action="INGEST_STUDIES"))
    with service.extensions["vre.db"].session() as session:
        stored = set(session.scalars(sa.select(Study.content_hash)))
        run = session.scalars(sa.select(IngestRun)).one()
    assert traces and {t["actor"] for t in traces} == {"steward-1"}
    assert {t["details"]["project"] for t in traces} == {run.project_id}
    assert {t["details"]["ingest_run"] for t in traces} == {run.id}
    traced = [h for t in traces for h in t["details"]["study_hashes"]]
    assert sorted(traced) == sorted(stored), "each study that entered is traced once"
    assert traces[-1]["details"]["counts"]["studies_ingested"] == len(stored)
    assert run.counts["studies_ingested"] == len(stored)


def test_a_tracer_outage_holds_up_no_ingestion_and_loses_no_trace(
    make_app: Callable[[str], Flask], tmp_path: Path, config: Config
) -> None:
    service = make_app("dataset_service")  # its tracer is not running
    db: Database = service.extensions["vre.db"]
    with db.session() as session:
        project = Project(name="lung", title="Lung", created_by="steward-1")
        session.add(project)
        session.flush()
        project_id = project.id
    generate_demo_data(tmp_path / "in", SPEC)
    ingestor: Ingestor = service.extensions["dataset.ingestor"]
    report = ingestor.run(ingestor.start(project_id, tmp_path / "in", "steward-1"))
    assert report.studies_ingested > 0 and len(studies_in(db)) == report.studies_ingested
    with db.session() as session:
        assert session.scalars(sa.select(IngestRun.state)).one() != "failed"
        waiting = [json.loads(t) for t in session.scalars(sa.select(trace_outbox.c.trace))]
    assert waiting and {t["action"] for t in waiting} == {"INGEST_STUDIES"}
    assert sum(len(t["details"]["study_hashes"]) for t in waiting) == report.studies_ingested


def test_quarantine_reports_are_json_without_values(
    tmp_path: Path, project: str, ingestor: Ingestor
) -> None:
    report = ingestor.run(ingestor.start(project, hostile_folder(tmp_path / "in"), "steward-1"))
    assert MARKER not in json.dumps(report.quarantine)
