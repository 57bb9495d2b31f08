"""Reading a granted dataset inside a desktop or job: its index as typed records, and its
series as NumPy volumes decoded with pydicom.

A dataset is mounted read-only at ``~/datasets/<folder>`` as its own tree:
``<subject>/<study uid>/<series uid>/NNNNN.dcm`` plus ``index.json``, which describes the
subjects (age, sex, diagnosis, clinical values), their studies and their series. This
module reads that tree and nothing else; it imports no platform service, and PyTorch and
Spark only where they are asked for (``batch_tools.torch_data``, ``batch_tools.spark``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from batch_tools.torch_data import SeriesDataset

__all__ = [
    "DataError", "DatasetInfo", "MountedDataset", "SeriesCache", "SeriesDataset",
    "SeriesRecord", "StudyRecord", "SubjectRecord", "datasets_home", "open_dataset",
]

INDEX_NAME = "index.json"


class DataError(Exception):
    """A dataset, index or file that is not what it should be; `code` is stable, `path` is
    relative to the dataset where a file is to blame."""

    def __init__(self, code: str, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.code = code
        self.path = path


@dataclass(frozen=True)
class DatasetInfo:
    """Which dataset at which version: what a result should name to be reproducible."""

    id: str | None
    name: str | None
    version: str | None
    content_hash: str | None


@dataclass(frozen=True)
class SeriesRecord:
    """One series as the index describes it; `folder` is relative to the dataset."""

    series_uid: str
    subject: str
    study_uid: str
    modality: str | None
    body_part: str | None
    description: str | None
    manufacturer: str | None
    rows: int | None
    columns: int | None
    slice_thickness: float | None
    slice_spacing: float | None
    instances: int
    folder: str


@dataclass(frozen=True)
class StudyRecord:
    """One study of a subject and its series."""

    study_uid: str
    date: str | None
    description: str | None
    series: tuple[SeriesRecord, ...]


@dataclass(frozen=True)
class SubjectRecord:
    """One pseudonymised subject: demographics, diagnosis, further clinical values."""

    subject: str
    age: int | None
    sex: str | None
    diagnosis: str | None
    clinical: Mapping[str, Any] = field(default_factory=dict)
    studies: tuple[StudyRecord, ...] = ()

    def value(self, key: str) -> Any:
        """A clinical value by name: age, sex and diagnosis, then the clinical table's keys;
        None where the subject has none."""
        if key in ("subject", "age", "sex", "diagnosis"):
            return getattr(self, key)
        return self.clinical.get(key)


def datasets_home() -> Path:
    """Where the granted datasets are mounted in a desktop or job: ~/datasets."""
    return Path.home() / "datasets"


def _field(record: Mapping[str, Any], key: str, kind: type, where: str,
           required: bool = False) -> Any:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError("index_invalid", f"{where} has no {key!r}", INDEX_NAME)
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError("index_invalid", f"{where}: {key!r} is not a {kind.__name__}",
                        INDEX_NAME)
    return value


def _parse_series(raw: Any, subject: str, study_uid: str) -> SeriesRecord:
    if not isinstance(raw, Mapping):
        raise DataError("index_invalid", f"a series of study {study_uid} is not an object",
                        INDEX_NAME)
    uid = _field(raw, "series_uid", str, f"a series of study {study_uid}", required=True)
    where = f"series {uid}"
    folder = _field(raw, "folder", str, where, required=True)
    if Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise DataError("index_invalid", f"{where}: folder {folder!r} leaves the dataset",
                        INDEX_NAME)
    return SeriesRecord(
        series_uid=uid, subject=subject, study_uid=study_uid,
        modality=_field(raw, "modality", str, where),
        body_part=_field(raw, "body_part", str, where),
        description=_field(raw, "description", str, where),
        manufacturer=_field(raw, "manufacturer", str, where),
        rows=_field(raw, "rows", int, where), columns=_field(raw, "columns", int, where),
        slice_thickness=_field(raw, "slice_thickness", float, where),
        slice_spacing=_field(raw, "slice_spacing", float, where),
        instances=_field(raw, "instances", int, where, required=True), folder=folder)


def parse_index(document: Any) -> tuple[DatasetInfo, tuple[SubjectRecord, ...]]:
    """The records of an index document (as `json.load` gives it); pure, so it is tested
    without files."""
    if not isinstance(document, Mapping) or not isinstance(document.get("subjects"), list):
        raise DataError("index_invalid", "the index has no list of subjects", INDEX_NAME)
    head = document.get("dataset") or {}
    if not isinstance(head, Mapping):
        raise DataError("index_invalid", "'dataset' is not an object", INDEX_NAME)
    info = DatasetInfo(id=_field(head, "id", str, "dataset"),
                       name=_field(head, "name", str, "dataset"),
                       version=_field(head, "version", str, "dataset"),
                       content_hash=_field(head, "content_hash", str, "dataset"))
    subjects = []
    for raw in document["subjects"]:
        if not isinstance(raw, Mapping):
            raise DataError("index_invalid", "a subject is not an object", INDEX_NAME)
        name = _field(raw, "subject", str, "a subject", required=True)
        where = f"subject {name}"
        studies = []
        for st in raw.get("studies") or []:
            if not isinstance(st, Mapping):
                raise DataError("index_invalid", f"a study of {where} is not an object",
                                INDEX_NAME)
            uid = _field(st, "study_uid", str, f"a study of {where}", required=True)
            studies.append(StudyRecord(
                study_uid=uid, date=_field(st, "date", str, f"study {uid}"),
                description=_field(st, "description", str, f"study {uid}"),
                series=tuple(_parse_series(se, name, uid) for se in st.get("series") or [])))
        clinical = raw.get("clinical") or {}
        if not isinstance(clinical, Mapping):
            raise DataError("index_invalid", f"{where}: 'clinical' is not an object",
                            INDEX_NAME)
        subjects.append(SubjectRecord(
            subject=name, age=_field(raw, "age", int, where), sex=_field(raw, "sex", str, where),
            diagnosis=_field(raw, "diagnosis", str, where), clinical=dict(clinical),
            studies=tuple(studies)))
    return info, tuple(subjects)


def _slice_order(ds: Any, file_name: str) -> tuple[float, int, str]:
    """Where a slice goes: its position along the slice normal where the header gives one,
    then its InstanceNumber, then its file name (so the order never depends on listing)."""
    position = 0.0
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        position = float(np.dot(normal, np.asarray(ipp, float)))
    number = ds.get("InstanceNumber")
    return position, int(number) if number is not None else 0, file_name


@dataclass(frozen=True)
class MountedDataset:
    """A dataset tree opened for reading. Holds no open file, so it pickles into DataLoader
    workers and Spark executors as it is."""

    root: Path
    info: DatasetInfo
    subjects: tuple[SubjectRecord, ...]

    @classmethod
    def open(cls, root: Path) -> MountedDataset:
        index = root / INDEX_NAME
        try:
            document = json.loads(index.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError("dataset_not_found",
                            f"{root} is not a dataset: it has no {INDEX_NAME}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError("index_invalid", f"not JSON: {exc}", INDEX_NAME) from None
        info, subjects = parse_index(document)
        return cls(root=root, info=info, subjects=subjects)

    def series(self, *, modality: str | None = None,
               body_part: str | None = None) -> list[SeriesRecord]:
        """Every series in index order, optionally only of one modality or body part."""
        return [se for subject in self.subjects for st in subject.studies for se in st.series
                if (modality is None or se.modality == modality)
                and (body_part is None or se.body_part == body_part)]

    def find_series(self, series_uid: str) -> SeriesRecord:
        for record in self.series():
            if record.series_uid == series_uid:
                return record
        raise DataError("series_not_found", f"no series {series_uid} in this dataset")

    def subject(self, name: str) -> SubjectRecord:
        for record in self.subjects:
            if record.subject == name:
                return record
        raise DataError("subject_not_found", f"no subject {name} in this dataset")

    def series_files(self, series: SeriesRecord) -> list[Path]:
        """The series' files in the tree, checked against the index's instance count."""
        folder = self.root / series.folder
        if not folder.is_dir():
            raise DataError("series_missing", "the index names this folder but it is absent",
                            series.folder)
        files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
        if len(files) != series.instances:
            raise DataError("series_mismatch", f"{len(files)} files, the index says "
                            f"{series.instances}", series.folder)
        return files

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def load_series(self, series: SeriesRecord | str) -> np.ndarray:
        """The series as a float32 volume (slices, rows, columns) in its modality's units
        (rescale slope and intercept applied), slices in spatial order."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        record = self.find_series(series) if isinstance(series, str) else series
        slices = []
        for path in self.series_files(record):
            name = self.relative(path)
            try:
                ds = pydicom.dcmread(path)
            except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
                raise DataError("file_unreadable", f"not a readable DICOM file ({exc})",
                                name) from None
            if str(ds.get("SeriesInstanceUID", "")) != record.series_uid:
                raise DataError("series_mismatch", "belongs to another series than the "
                                f"index's {record.series_uid}", name)
            try:
                pixels = ds.pixel_array
            except Exception as exc:  # pydicom raises many kinds for bad pixel data
                raise DataError("file_unreadable", f"its pixel data cannot be decoded ({exc})",
                                name) from None
            expected = (record.rows or pixels.shape[0], record.columns or pixels.shape[-1])
            if pixels.ndim != 2 or pixels.shape != expected:
                raise DataError("series_mismatch", f"its image is {pixels.shape}, the index "
                                f"says {expected[0]} rows by {expected[1]} columns", name)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            image = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            slices.append((_slice_order(ds, path.name), image))
        slices.sort(key=lambda item: item[0])
        return np.stack([image for _, image in slices])

    def cache_key(self) -> str:
        """What names this dataset's decoded series in a cache: its content hash, or where
        the index has none, the hash of the index itself."""
        if self.info.content_hash:
            return self.info.content_hash.replace(":", "-").replace("/", "-")
        return "index-" + hashlib.sha256((self.root / INDEX_NAME).read_bytes()).hexdigest()


def open_dataset(where: str | os.PathLike[str], home: Path | None = None) -> MountedDataset:
    """Open a mounted dataset by its path, or by its folder name under ~/datasets."""
    path = Path(where).expanduser()
    if not (path / INDEX_NAME).is_file() and len(path.parts) == 1:
        home = home or datasets_home()
        if not (home / path).is_dir():
            raise DataError("dataset_not_found", f"no dataset folder {str(path)!r} here nor "
                            f"under {home} (its README lists the granted ones)")
        path = home / path
    return MountedDataset.open(path)


class SeriesCache:
    """Decoded series kept as .npy files under a folder the caller names (for example in
    ~/persistent), keyed by the dataset's content hash and the series UID, written
    atomically so a reader never sees half a file; never inside a dataset."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()

    def _path(self, dataset: MountedDataset, series_uid: str) -> Path:
        root, here = dataset.root.resolve(), self.directory.resolve()
        if here == root or root in here.parents:
            raise DataError("cache_in_dataset", f"the cache {self.directory} is inside the "
                            "dataset, which is read-only and must stay as released")
        return self.directory / dataset.cache_key() / f"{series_uid}.npy"

    def get(self, dataset: MountedDataset, series_uid: str) -> np.ndarray | None:
        path = self._path(dataset, series_uid)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError):
            # A damaged entry is a miss: it is decoded again and replaced.
            return None

    def put(self, dataset: MountedDataset, series_uid: str, volume: np.ndarray) -> None:
        path = self._path(dataset, series_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{series_uid}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                np.save(out, volume, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def load(self, dataset: MountedDataset, series: SeriesRecord) -> np.ndarray:
        """The series from the cache, or decoded from the dataset and kept."""
        volume = self.get(dataset, series.series_uid)
        if volume is None:
            volume = dataset.load_series(series)
            self.put(dataset, series.series_uid, volume)
        return volume

    def entries(self, dataset: MountedDataset) -> Iterator[Path]:
        folder = self.directory / dataset.cache_key()
        return iter(sorted(folder.glob("*.npy")) if folder.is_dir() else [])


def __getattr__(name: str) -> Any:
    # The PyTorch dataset lives in its own module so that reading an index never imports
    # torch; it is still reachable as batch_tools.data.SeriesDataset.
    if name == "SeriesDataset":
        from batch_tools.torch_data import SeriesDataset
        return SeriesDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
