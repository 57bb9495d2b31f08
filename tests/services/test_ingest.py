"""Ingestion of generated series and of pydicom's own files: counts, hashes, quarantine,
idempotence, and no partial study in the repository."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from dataset_service.demo import DemoSpec, generate_demo_data, write_faulty_examples
from dataset_service.dicom import DeidPolicy
from dataset_service.ingest import Ingestor
from dataset_service.models import Instance, Project, QuarantineEntry, Series, Study, Subject
from dataset_service.repository import Repository
from vre.config import Config
from vre.db import Database

SPEC = DemoSpec(seed=11, subjects=3, slices_per_series=(4, 6))


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
    return Ingestor(db, Repository(config.repository_path), DeidPolicy(), workers=2)


def blobs(config: Config) -> set[str]:
    root = config.repository_path / "blobs"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def count(db: Database, model: type) -> int:
    with db.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_demo_series_ingest_with_right_counts_and_hashes(
        tmp_path: Path, db: Database, project: str, ingestor: Ingestor, config: Config) -> None:
    summary = generate_demo_data(tmp_path / "in", SPEC)
    run = ingestor.start(project, tmp_path / "in", "steward-1")
    report = ingestor.run(run)
    assert report.studies_ingested == summary.studies
    assert report.files_ingested == summary.instances
    assert report.files_quarantined == 0
    assert count(db, Subject) == summary.subjects
    assert count(db, Series) == summary.series
    assert count(db, Instance) == summary.instances
    assert report.subjects_with_clinical_data == summary.subjects
    expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in summary.files}
    assert blobs(config) == expected
    with db.session() as session:
        instance = session.scalars(sa.select(Instance)).first()
        stored = Repository(config.repository_path).blob_path(instance.sha256)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == instance.sha256
        assert not os.access(stored, os.W_OK) or os.geteuid() == 0
        assert stored.stat().st_mode & 0o222 == 0, "blobs are read-only"
        ct = session.scalars(sa.select(Series).where(Series.modality == "CT")).first()
        if ct is not None:
            assert ct.manufacturer and ct.rows == 64 and ct.slice_spacing
        subject = session.scalars(sa.select(Subject)).first()
        assert subject.age and subject.sex in ("M", "F") and subject.diagnosis
        assert "smoking_status" in subject.clinical


def test_reingest_is_a_no_op(tmp_path: Path, db: Database, project: str,
                             ingestor: Ingestor, config: Config) -> None:
    summary = generate_demo_data(tmp_path / "in", SPEC)
    ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    before = (count(db, Study), count(db, Instance), blobs(config))
    again = ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    assert again.studies_ingested == 0 and again.studies_skipped == summary.studies
    assert (count(db, Study), count(db, Instance), blobs(config)) == before


def test_bad_files_are_quarantined_and_no_partial_study_enters(
        tmp_path: Path, db: Database, project: str, ingestor: Ingestor, config: Config) -> None:
    summary = generate_demo_data(tmp_path / "in", SPEC)
    subject_dir = next((tmp_path / "in" / "dicom").iterdir())
    faulty = write_faulty_examples(subject_dir, seed=11, subject_id=subject_dir.name)
    # A study with one identifying file among good ones must stay out entirely.
    good_study = next(p for p in subject_dir.iterdir() if p.name.startswith("study"))
    victim = next(good_study.rglob("*.dcm"))
    ds = pydicom.dcmread(victim)
    ds.PatientName = "Doe^John"
    ds.save_as(victim)
    report = ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    by_path = {q["path"]: q for q in report.quarantine}
    expected = {"truncated": "truncated", "not_dicom": "not_dicom",
                "identifying": "identifying_data", "missing_uids": "missing_uid"}
    for name, reason in expected.items():
        assert by_path[str(faulty[name])]["reason"] == reason, name
    assert by_path[str(victim)]["reason"] == "identifying_data"
    assert "PatientName" in by_path[str(victim)]["message"]
    victim_study = str(ds.StudyInstanceUID)
    siblings = [q for q in report.quarantine if q["study_uid"] == victim_study]
    assert {q["reason"] for q in siblings} == {"identifying_data", "study_incomplete"}
    assert report.studies_ingested == summary.studies - 1
    with db.session() as session:
        assert session.scalar(sa.select(Study).where(Study.study_uid == victim_study)) is None
        assert session.scalar(sa.select(sa.func.count()).select_from(QuarantineEntry)) == \
            len(report.quarantine)
        stored = set(session.scalars(sa.select(Instance.sha256)))
    assert blobs(config) == stored, "no blob without its row"
    for path in faulty.values():
        if path.exists() and path.suffix == ".dcm":
            assert hashlib.sha256(path.read_bytes()).hexdigest() not in stored


def test_identifying_clinical_table_is_refused(tmp_path: Path, project: str,
                                               ingestor: Ingestor) -> None:
    generate_demo_data(tmp_path / "in", SPEC)
    (tmp_path / "in" / "clinical.json").unlink()
    csv = tmp_path / "in" / "clinical.csv"
    csv.write_text(csv.read_text().replace("subject_id,", "subject_id,patient_name,", 1))
    report = ingestor.run(ingestor.start(project, tmp_path / "in", "steward-1"))
    assert any(q["reason"] == "identifying_data" and q["path"].endswith("clinical.csv")
               for q in report.quarantine)
    assert report.subjects_with_clinical_data == 0


def test_pydicom_bundled_files_never_break_ingestion(tmp_path: Path, project: str,
                                                     ingestor: Ingestor, db: Database) -> None:
    bundled = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    source = tmp_path / "bundled"
    source.mkdir()
    for path in sorted(bundled.glob("*.dcm")):
        (source / path.name).write_bytes(path.read_bytes())
    report = ingestor.run(ingestor.start(project, source, "steward-1"))
    assert report.files == len(list(source.glob("*.dcm")))
    assert report.files_ingested + report.files_quarantined == report.files
    with db.session() as session:
        run = session.scalars(sa.select(Study)).all()
    assert len(run) == report.studies_ingested

