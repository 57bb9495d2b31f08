"""Synthetic, pseudonymised demo DICOM data and clinical table for the demo and for tests.

Nothing binary is committed to the repository: ``vre up`` and the tests call
:func:`generate_demo_data`, which writes a small, fully synthetic cohort (DICOM Part 10
files plus a clinical table) deterministically from a seed. :func:`write_faulty_examples`
writes files an ingestion validator must refuse.

Usage: ``python -m dataset_service.demo OUT_DIR [--seed N] [--subjects N]``
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

__all__ = ["DemoSpec", "DemoSummary", "generate_demo_data", "main", "write_faulty_examples"]

# Fixed namespace: UIDs are 2.25.<uuid5(namespace, name)>, i.e. proper UUID-derived UIDs
# that depend only on their name. (pydicom's generate_uid(prefix=None, ...) ignores
# entropy_srcs and returns a random UUID, so it cannot be used for determinism.)
_UID_NAMESPACE = uuid.UUID("5b0c6a52-3a8e-4f0e-9d0e-6f1d2c7a9e41")
DEID_METHOD = "VRE demo generator: synthetic data, no real patient"
CLINICAL_FIELDS = ("subject_id", "age", "sex", "diagnosis", "smoking_status", "bmi")
_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
_MANUFACTURERS = {  # (manufacturer, model, MR field strength in T or None)
    "CT": [("Acme Medical", "Helix CT 64", None), ("Northwind Imaging", "Aurora 128", None)],
    "MR": [("Acme Medical", "Magnus 1.5T", 1.5), ("Lumen Systems", "Orion 3T", 3.0)],
}
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@dataclass(frozen=True)
class _Protocol:
    """How a (modality, body part) study looks: descriptions and geometry."""

    study_description: str
    series_descriptions: tuple[str, ...]
    orientation: tuple[float, ...]  # ImageOrientationPatient: row then column direction
    pixel_spacing: float  # mm
    slice_thickness: float  # mm


_PROTOCOLS: dict[tuple[str, str], _Protocol] = {
    ("CT", "CHEST"): _Protocol(
        "CT CHEST W/O CONTRAST", ("AX LUNG", "AX MEDIASTINUM", "AX BONE"), _AXIAL, 5.5, 5.0
    ),
    ("CT", "ABDOMEN"): _Protocol(
        "CT ABDOMEN W CONTRAST", ("AX PORTAL VENOUS", "AX ARTERIAL", "AX DELAYED"), _AXIAL, 6.0, 5.0
    ),
    ("CT", "HEAD"): _Protocol("CT HEAD", ("AX BRAIN", "AX BONE", "AX THIN"), _AXIAL, 3.5, 4.0),
    ("MR", "HEAD"): _Protocol("MR BRAIN", ("AX T1", "AX T2", "AX FLAIR"), _AXIAL, 3.6, 5.0),
    ("MR", "KNEE"): _Protocol("MR KNEE", ("SAG PD", "SAG T2 FS", "SAG T1"), _SAGITTAL, 2.5, 3.0),
}
# Diagnosis -> the (modality, body part) studies a subject with it plausibly gets.
_DIAGNOSES: dict[str, tuple[tuple[str, str], ...]] = {
    "lung nodule": (("CT", "CHEST"),),
    "pneumonia": (("CT", "CHEST"),),
    "liver lesion": (("CT", "ABDOMEN"),),
    "glioma": (("MR", "HEAD"), ("CT", "HEAD")),
    "meniscal tear": (("MR", "KNEE"),),
    "healthy control": tuple(_PROTOCOLS),
}


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. Defaults: a tiny cohort (~2 MB, written in about a second)."""

    seed: int = 7
    subjects: int = 6
    studies_per_subject: tuple[int, int] = (1, 2)  # inclusive range
    series_per_study: tuple[int, int] = (1, 3)
    slices_per_series: tuple[int, int] = (8, 24)
    rows: int = 64  # small on purpose: fast to write, small on disk
    cols: int = 64
    modalities: tuple[str, ...] = ("CT", "MR")
    project: str = "demo"
    subject_prefix: str = "SUBJ"

    def __post_init__(self) -> None:
        for name in ("studies_per_subject", "series_per_study", "slices_per_series"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be a range 1 <= low <= high, got {(low, high)}")
        if self.subjects < 1 or self.rows < 8 or self.cols < 8:
            raise ValueError("need at least 1 subject and 8x8 pixels")
        if not self.modalities or set(self.modalities) - set(_SOP_CLASSES):
            raise ValueError(f"modalities must be a non-empty subset of {sorted(_SOP_CLASSES)}")


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo_data` wrote: UIDs in write order and total bytes."""

    out_dir: Path
    subject_ids: tuple[str, ...]
    study_uids: tuple[str, ...]
    series_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    bytes: int  # all files written (DICOM and clinical tables)
    files: tuple[Path, ...] = field(repr=False, default=())  # the DICOM files

    @property
    def subjects(self) -> int:
        return len(self.subject_ids)

    @property
    def studies(self) -> int:
        return len(self.study_uids)

    @property
    def series(self) -> int:
        return len(self.series_uids)

    @property
    def instances(self) -> int:
        return len(self.sop_instance_uids)

    def counts(self) -> dict[str, int]:
        """Counts only, e.g. for printing or JSON."""
        return {
            "subjects": self.subjects,
            "studies": self.studies,
            "series": self.series,
            "instances": self.instances,
            "bytes": self.bytes,
        }


def _uid(*parts: object) -> UID:
    """A deterministic UUID-derived UID (2.25.x) for a name built from ``parts``."""
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}")


def _phantom(
    gen: np.random.Generator, modality: str, slices: int, rows: int, cols: int
) -> np.ndarray:
    """A synthetic volume (stored values, uint16 in 0..4095): body ellipse, ellipsoids, noise."""
    w, v, u = np.meshgrid(
        np.linspace(-1, 1, slices),
        np.linspace(-1, 1, rows),
        np.linspace(-1, 1, cols),
        indexing="ij",
    )
    # CT stored values are HU + 1024 (RescaleIntercept -1024); MR values are arbitrary units.
    background, body, lo, hi, noise = (
        (24, 1064, 300, 1800, 12) if modality == "CT" else (0, 800, 150, 2000, 25)
    )
    taper = 1 - 0.3 * w**2
    vol = np.full(u.shape, float(background))
    vol[(u / (0.85 * taper)) ** 2 + (v / (0.65 * taper)) ** 2 <= 1] = body
    for _ in range(3):
        c = gen.uniform(-0.4, 0.4, 3)
        r = gen.uniform(0.12, 0.3, 3)
        inside = ((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((w - c[2]) / 0.8) ** 2
        vol[inside <= 1] = gen.uniform(lo, hi)
    vol += gen.normal(0, noise, vol.shape)
    return np.clip(np.rint(vol), 0, 4095).astype("<u2")


def _base_dataset(modality: str, sop_uid: str) -> Dataset:
    """An empty dataset with Part 10 file meta (Explicit VR Little Endian) and SOP identity."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = _SOP_CLASSES[modality]
    ds.SOPInstanceUID = sop_uid
    return ds


def _series_datasets(
    *, subject: dict, study: dict, series: dict, pixels: np.ndarray
) -> list[Dataset]:
    """One dataset per slice of a series; ``subject``/``study``/``series`` hold the values."""
    modality, proto = study["modality"], _PROTOCOLS[study["modality"], study["body_part"]]
    row_dir, col_dir = np.array(proto.orientation[:3]), np.array(proto.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    n_slices, rows, cols = pixels.shape
    origin = -(row_dir * (cols - 1) + col_dir * (rows - 1)) * proto.pixel_spacing / 2
    origin = origin + normal * series["start"]
    datasets = []
    for i in range(n_slices):
        ds = _base_dataset(modality, series["instance_uids"][i])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if proto.orientation == _AXIAL else "OTHER"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["date"]
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = study["time"]
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer, ds.ManufacturerModelName = study["manufacturer"], study["model"]
        ds.StudyDescription = proto.study_description
        ds.SeriesDescription = series["description"]
        ds.PatientName = ds.PatientID = subject["subject_id"]
        ds.PatientSex = subject["sex"]
        ds.PatientAge = f"{subject['age']:03d}Y"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEID_METHOD
        ds.ClinicalTrialSponsorName = "VRE demo"
        ds.ClinicalTrialProtocolID = subject["project"]
        ds.ClinicalTrialSubjectID = subject["subject_id"]
        ds.BodyPartExamined = study["body_part"]
        ds.SliceThickness = proto.slice_thickness
        if modality == "CT":
            ds.KVP = 120
        else:
            ds.ScanningSequence, ds.SequenceVariant = "SE", "NONE"
            ds.MagneticFieldStrength = study["field_strength"]
        ds.StudyInstanceUID = study["uid"]
        ds.SeriesInstanceUID = series["uid"]
        ds.StudyID = str(study["number"])
        ds.SeriesNumber = series["number"]
        ds.InstanceNumber = i + 1
        position = origin + normal * proto.slice_thickness * i
        ds.ImagePositionPatient = [round(float(x), 3) + 0.0 for x in position]
        ds.ImageOrientationPatient = list(proto.orientation)
        ds.FrameOfReferenceUID = series["frame_uid"]
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = round(float(position @ normal), 3)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [proto.pixel_spacing, proto.pixel_spacing]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if modality == "CT":
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.add_new(0x7FE00010, "OW", pixels[i].tobytes())  # PixelData
        datasets.append(ds)
    return datasets


def _plan(spec: DemoSpec) -> list[tuple[dict, dict, dict, np.ndarray]]:
    """Draw every subject, study and series from the seed: (subject, study, series, pixels)."""
    rng, gen = random.Random(spec.seed), np.random.default_rng(spec.seed)
    ns = ("vre-demo", spec.project, spec.seed)
    diagnoses = {
        name: allowed
        for name, options in _DIAGNOSES.items()
        if (allowed := [o for o in options if o[0] in spec.modalities])
    }
    plan = []
    for s in range(1, spec.subjects + 1):
        subject_id = f"{spec.subject_prefix}-{s:04d}"
        diagnosis = rng.choice(sorted(diagnoses))
        subject = {
            "subject_id": subject_id,
            "age": rng.randint(25, 85),
            "sex": rng.choice("FM"),
            "diagnosis": diagnosis,
            "smoking_status": rng.choice(["never", "former", "current"]),
            "bmi": round(rng.uniform(18.5, 34.0), 1),
            "project": spec.project,
        }
        day = dt.date(2021, 1, 4) + dt.timedelta(days=rng.randint(0, 700))
        for st in range(1, rng.randint(*spec.studies_per_subject) + 1):
            modality, body_part = rng.choice(diagnoses[diagnosis])
            manufacturer, model, field_strength = rng.choice(_MANUFACTURERS[modality])
            study = {
                "uid": _uid(*ns, "study", subject_id, st),
                "number": st,
                "modality": modality,
                "body_part": body_part,
                "date": day.strftime("%Y%m%d"),
                "time": f"{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
                "manufacturer": manufacturer,
                "model": model,
                "field_strength": field_strength,
            }
            day += dt.timedelta(days=rng.randint(30, 180))
            descriptions = _PROTOCOLS[modality, body_part].series_descriptions
            for se in range(1, rng.randint(*spec.series_per_study) + 1):
                n = rng.randint(*spec.slices_per_series)
                series = {
                    "uid": _uid(*ns, "series", subject_id, st, se),
                    "frame_uid": _uid(*ns, "frame", subject_id, st, se),
                    "number": se,
                    "description": descriptions[(se - 1) % len(descriptions)],
                    "start": round(rng.uniform(-120.0, -40.0), 1),
                    "instance_uids": [
                        _uid(*ns, "instance", subject_id, st, se, i) for i in range(1, n + 1)
                    ],
                }
                pixels = _phantom(gen, modality, n, spec.rows, spec.cols)
                plan.append((subject, study, series, pixels))
    return plan


def generate_demo_data(out_dir: Path, spec: DemoSpec = DemoSpec()) -> DemoSummary:
    """Write ``out_dir/dicom/<subject>/<study>/<series>/<NNNN>.dcm`` and clinical.csv/.json.

    Deterministic: the same spec gives byte-identical files; another seed other UIDs.
    Use a fresh ``out_dir``: files already there are neither removed nor counted.
    """
    out_dir = Path(out_dir)
    subjects: dict[str, dict] = {}
    studies: dict[str, None] = {}  # insertion-ordered sets
    series_uids, sop_uids, files = [], [], []
    for subject, study, series, pixels in _plan(spec):
        subjects[subject["subject_id"]] = subject
        studies[study["uid"]] = None
        series_uids.append(series["uid"])
        folder = (
            out_dir
            / "dicom"
            / subject["subject_id"]
            / f"study-{study['number']:02d}"
            / f"series-{series['number']:02d}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        for ds in _series_datasets(subject=subject, study=study, series=series, pixels=pixels):
            path = folder / f"{ds.InstanceNumber:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sop_uids.append(ds.SOPInstanceUID)
            files.append(path)
    rows = [{k: s[k] for k in CLINICAL_FIELDS} for s in subjects.values()]
    with open(out_dir / "clinical.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CLINICAL_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "clinical.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    written = [*files, out_dir / "clinical.csv", out_dir / "clinical.json"]
    return DemoSummary(
        out_dir=out_dir,
        subject_ids=tuple(subjects),
        study_uids=tuple(studies),
        series_uids=tuple(series_uids),
        sop_instance_uids=tuple(sop_uids),
        bytes=sum(p.stat().st_size for p in written),
        files=tuple(files),
    )


def write_faulty_examples(
    out_dir: Path, seed: int = 7, *, subject_id: str = "SUBJ-0001"
) -> dict[str, Path]:
    """Write files an ingestion validator must refuse; return name -> path.

    Each lands in its own study folder ``out_dir/faulty-<name>/series-01/0001.dcm``, so
    ``out_dir`` can be a demo subject folder and the subject's good studies stay valid.
    """
    out_dir = Path(out_dir)
    gen = np.random.default_rng(seed)
    paths: dict[str, Path] = {}

    def valid(name: str) -> Dataset:
        ns = ("vre-demo-faulty", seed, name)
        subject = {"subject_id": subject_id, "age": 50, "sex": "F", "project": "faulty"}
        study = {
            "uid": _uid(*ns),
            "number": 1,
            "modality": "CT",
            "body_part": "CHEST",
            "date": "20220301",
            "time": "090000",
            "manufacturer": "Acme Medical",
            "model": "Helix CT 64",
            "field_strength": None,
        }
        series = {
            "uid": _uid(*ns, 1),
            "frame_uid": _uid(*ns, "frame"),
            "number": 1,
            "description": "AX LUNG",
            "start": -80.0,
            "instance_uids": [_uid(*ns, 1, 1)],
        }
        pixels = _phantom(gen, "CT", 1, 32, 32)
        return _series_datasets(subject=subject, study=study, series=series, pixels=pixels)[0]

    def path_for(name: str) -> Path:
        folder = out_dir / f"faulty-{name.replace('_', '-')}" / "series-01"
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = folder / "0001.dcm"
        return paths[name]

    path = path_for("truncated")
    valid("truncated").save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    path_for("not_dicom").write_text("This is not a DICOM file, just text.\n", encoding="utf-8")

    ds = valid("identifying")
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN00482913"
    ds.PatientBirthDate = "19720315"
    ds.InstitutionName = "St. Example General Hospital"
    del ds.PatientIdentityRemoved, ds.DeidentificationMethod
    ds.save_as(path_for("identifying"), enforce_file_format=True)

    ds = valid("missing_uids")
    del ds.StudyInstanceUID, ds.SeriesInstanceUID
    ds.save_as(path_for("missing_uids"), enforce_file_format=True)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate the demo data into OUT_DIR and print the summary."""
    parser = argparse.ArgumentParser(
        prog="python -m dataset_service.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path, help="directory to write into")
    parser.add_argument("--seed", type=int, default=DemoSpec.seed)
    parser.add_argument("--subjects", type=int, default=DemoSpec.subjects)
    args = parser.parse_args(argv)
    summary = generate_demo_data(args.out_dir, DemoSpec(seed=args.seed, subjects=args.subjects))
    print(f"demo data written to {summary.out_dir}")
    for key, value in summary.counts().items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
