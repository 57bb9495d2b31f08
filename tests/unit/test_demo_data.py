"""Tests for the synthetic demo-data generator (dataset_service.demo)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from dataset_service.demo import DemoSpec, generate_demo_data, main, write_faulty_examples

SMALL = DemoSpec(subjects=2, slices_per_series=(2, 4))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The default demo, generated once, with every DICOM file read back."""
    out = tmp_path_factory.mktemp("demo")
    summary = generate_demo_data(out)
    files = sorted((out / "dicom").rglob("*.dcm"))
    return summary, out, {path: dcmread(path) for path in files}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_counts_match_summary(demo) -> None:
    summary, out, datasets = demo
    assert len(datasets) == summary.instances == len(summary.files) > 0
    assert summary.subjects == DemoSpec().subjects
    assert {ds.PatientID for ds in datasets.values()} == set(summary.subject_ids)
    assert {ds.StudyInstanceUID for ds in datasets.values()} == set(summary.study_uids)
    assert {ds.SeriesInstanceUID for ds in datasets.values()} == set(summary.series_uids)
    assert {ds.SOPInstanceUID for ds in datasets.values()} == set(summary.sop_instance_uids)
    assert summary.bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert summary.bytes < 20_000_000


def test_files_are_valid_part10(demo) -> None:
    _, out, datasets = demo
    for path, ds in datasets.items():
        rel = path.relative_to(out / "dicom").parts
        assert rel[0] == ds.PatientID and rel[3] == f"{ds.InstanceNumber:04d}.dcm"
        assert ds.preamble == b"\0" * 128
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}[ds.Modality]
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == sop_class
        assert (ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation) == (
            16,
            12,
            "MONOCHROME2",
        )
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) == (64, 64)
        assert ds.pixel_array.max() < 2**12
        assert ("RescaleIntercept" in ds) == (ds.Modality == "CT")
        assert ds.BodyPartExamined in {"CHEST", "ABDOMEN", "HEAD", "KNEE"}
        assert ds.Manufacturer and ds.ManufacturerModelName and ds.SeriesDescription


def test_uids_unique_and_consistent(demo) -> None:
    summary, _, datasets = demo
    for uids in (summary.study_uids, summary.series_uids, summary.sop_instance_uids):
        assert len(set(uids)) == len(uids)
    series_keys: dict[str, set] = defaultdict(set)
    study_subject: dict[str, set] = defaultdict(set)
    for ds in datasets.values():
        series_keys[ds.SeriesInstanceUID].add(
            (ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesNumber, ds.Modality)
        )
        study_subject[ds.StudyInstanceUID].add(ds.PatientID)
    assert all(len(keys) == 1 for keys in series_keys.values())
    assert all(len(subjects) == 1 for subjects in study_subject.values())
    frames = [next(iter(keys))[1] for keys in series_keys.values()]
    assert len(set(frames)) == len(frames)


def test_positions_advance_along_slice_normal(demo) -> None:
    _, _, datasets = demo
    by_series = defaultdict(list)
    for ds in datasets.values():
        by_series[ds.SeriesInstanceUID].append(ds)
    for slices in by_series.values():
        slices.sort(key=lambda ds: ds.InstanceNumber)
        assert [ds.InstanceNumber for ds in slices] == list(range(1, len(slices) + 1))
        orientation = np.array(slices[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        along = [np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal) for ds in slices]
        assert np.all(np.diff(along) > 0)
        assert np.allclose(np.diff(along), float(slices[0].SliceThickness))


def test_pseudonymised_headers(demo) -> None:
    _, _, datasets = demo
    for ds in datasets.values():
        assert "PatientBirthDate" not in ds
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        assert str(ds.PatientName) == ds.PatientID
        assert ds.PatientID.startswith("SUBJ-")
        for keyword in (
            "InstitutionName",
            "InstitutionAddress",
            "ReferringPhysicianName",
            "PerformingPhysicianName",
            "OperatorsName",
        ):
            assert keyword not in ds


def test_clinical_tables_agree_with_headers(demo) -> None:
    summary, out, datasets = demo
    with open(out / "clinical.csv", newline="", encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    json_rows = json.loads((out / "clinical.json").read_text(encoding="utf-8"))
    assert [r["subject_id"] for r in csv_rows] == list(summary.subject_ids)
    assert [{k: str(v) for k, v in r.items()} for r in json_rows] == csv_rows
    clinical = {r["subject_id"]: r for r in json_rows}
    for ds in datasets.values():
        row = clinical[ds.PatientID]
        assert ds.PatientAge == f"{row['age']:03d}Y"
        assert ds.PatientSex == row["sex"]
    for row in json_rows:
        assert row["diagnosis"] and row["smoking_status"] and 10 < row["bmi"] < 60


def test_deterministic_per_seed(tmp_path: Path) -> None:
    first = generate_demo_data(tmp_path / "a", SMALL)
    second = generate_demo_data(tmp_path / "b", SMALL)
    assert first.counts() == second.counts()
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    other = generate_demo_data(tmp_path / "c", DemoSpec(seed=8, subjects=2))
    for level in ("study_uids", "series_uids", "sop_instance_uids"):
        assert not set(getattr(first, level)) & set(getattr(other, level))


def test_faulty_examples(tmp_path: Path) -> None:
    summary = generate_demo_data(tmp_path, SMALL)
    subject_dir = tmp_path / "dicom" / summary.subject_ids[0]
    faulty = write_faulty_examples(subject_dir)
    assert set(faulty) == {"truncated", "not_dicom", "identifying", "missing_uids"}
    assert len({p.parent.parent for p in faulty.values()}) == 4  # one study folder each
    with pytest.raises(ValueError):  # header parses, pixel data is short
        _ = dcmread(faulty["truncated"]).pixel_array
    with pytest.raises(InvalidDicomError):
        dcmread(faulty["not_dicom"])
    identifying = dcmread(faulty["identifying"])
    assert str(identifying.PatientName) == "Doe^Jane"
    assert "PatientBirthDate" in identifying and "InstitutionName" in identifying
    missing = dcmread(faulty["missing_uids"])
    assert "StudyInstanceUID" not in missing and "SeriesInstanceUID" not in missing
    assert missing.pixel_array.size > 0
    # The good studies beside them are untouched.
    for path in summary.files:
        if path.is_relative_to(subject_dir):
            assert dcmread(path).StudyInstanceUID in summary.study_uids


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--seed", "3", "--subjects", "1"]) == 0
    out = capsys.readouterr().out
    assert "subjects: 1" in out and "instances:" in out
    assert (tmp_path / "clinical.csv").exists()
