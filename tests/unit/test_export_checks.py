"""Tests for the export airlock's automatic checks (portal.exports.checks): each file, built in
memory, gets the verdict and code a reviewer would expect."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from portal.exports.checks import (
    ARCHIVE_LINK,
    ARCHIVE_TOO_DEEP,
    ARCHIVE_TOO_LARGE,
    ARCHIVE_UNREADABLE,
    ARRAY,
    CODES,
    DATASET_PIXELS,
    DICOM,
    FLAG,
    IDENTIFIER,
    IMAGE,
    PASS,
    REFUSE,
    REPOSITORY_FILE,
    SEVERITY,
    SMALL_COUNT,
    TOO_LARGE,
    TOO_MANY_FILES,
    UID_LIKE,
    UNREADABLE,
    ZERO_COUNT,
    ArchiveLimits,
    Known,
    RequestLimits,
    check_file,
    check_limits,
    check_path,
    check_request,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1111111111"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2222222222"
SHAPE = (3, 64, 64)
REPOSITORY_FILE_BYTES = b"a file of the repository, byte for byte\n" * 10


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientID = "SUBJ-0001"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = SHAPE[1:]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros(SHAPE[1:], dtype=np.int16).tobytes()
    return ds


def dicom_file() -> bytes:
    ds = _dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def headerless_dicom(implicit: bool = True) -> bytes:
    """A data set written without preamble, 'DICM' or file meta, as some tools write it."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, _dataset())
    return out.getvalue()


def zip_of(**members: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name.replace("__", "/"), data)
    return out.getvalue()


def tar_of(mode: str = "w", links: dict[str, str] | None = None, **members: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def nifti(dims: tuple[int, ...], bitpix: int = 16) -> bytes:
    """A NIfTI-1 single-file header (and no voxels: the header alone decides)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, 4, bitpix)
    header[344:348] = b"n+1\0"
    return bytes(header)


def torch_file(shape: tuple[int, ...]) -> bytes:
    import torch

    out = io.BytesIO()
    torch.save(torch.zeros(shape, dtype=torch.int16), out)
    return out.getvalue()


def png(width: int = 4, height: int = 4) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sIIBBBBB", 13, b"IHDR", width, height, 8, 0, 0,
                                              0, 0) + b"\0" * 16


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def nested_zips(depth: int) -> bytes:
    data = b"hello\n"
    for level in range(depth):
        data = zip_of(**{f"level{level}.zip" if level else "note.txt": data})
    return data


KNOWN = Known(
    repository_hashes=frozenset({hashlib.sha256(REPOSITORY_FILE_BYTES).hexdigest()}),
    series_shapes=frozenset({SHAPE, SHAPE[1:]}),
    series_sizes=frozenset({SHAPE[0] * SHAPE[1] * SHAPE[2] * 2}),
    identifiers=frozenset({STUDY_UID, SERIES_UID, "SUBJ-0001", "STUDY-42"}),
)

CASES: list = [
    # name, content, verdict, code (None: no finding at all)
    pytest.param("notes.txt", dicom_file, REFUSE, DICOM, id="dicom-renamed-txt"),
    pytest.param("scan", headerless_dicom, REFUSE, DICOM, id="dicom-headerless-implicit"),
    pytest.param("scan.bin", lambda: headerless_dicom(implicit=False), REFUSE, DICOM,
                 id="dicom-headerless-explicit"),
    pytest.param("outer.tar", lambda: tar_of(**{"inner.zip": zip_of(**{"scan.txt": dicom_file()})}),
                 REFUSE, DICOM, id="dicom-in-zip-in-tar"),
    pytest.param("results.tar.gz", lambda: tar_of("w:gz", **{"a/scan.dat": dicom_file()}),
                 REFUSE, DICOM, id="dicom-in-tar-gz"),
    pytest.param("results.tar.bz2", lambda: tar_of("w:bz2", **{"scan": headerless_dicom()}),
                 REFUSE, DICOM, id="dicom-in-tar-bz2"),
    pytest.param("scan.xz", lambda: lzma.compress(dicom_file()), REFUSE, DICOM, id="dicom-xz"),
    pytest.param("scan.bz2", lambda: bz2.compress(dicom_file()), REFUSE, DICOM, id="dicom-bz2"),
    pytest.param("copy.dat", lambda: REPOSITORY_FILE_BYTES, REFUSE, REPOSITORY_FILE,
                 id="repository-file"),
    pytest.param("pixels.npy", lambda: npy(np.zeros(SHAPE, np.int16)), REFUSE, DATASET_PIXELS,
                 id="npy-series-shape"),
    pytest.param("slices.npy", lambda: npy(np.zeros((2, 64, 64), np.float32)), REFUSE,
                 DATASET_PIXELS, id="npy-stack-of-slices"),
    pytest.param("pixels.npz", lambda: npz(volume=np.zeros(SHAPE[::-1], np.int16)), REFUSE,
                 DATASET_PIXELS, id="npz-series-shape-transposed"),
    pytest.param("scores.npy", lambda: npy(np.arange(10, dtype=np.float64)), FLAG, ARRAY,
                 id="npy-other"),
    pytest.param("volume.nii", lambda: nifti((64, 64, 3)), REFUSE, DATASET_PIXELS,
                 id="nifti-series-dims"),
    pytest.param("volume.nii.gz", lambda: gzip.compress(nifti((64, 64, 3))), REFUSE,
                 DATASET_PIXELS, id="nifti-gz-series-dims"),
    pytest.param("atlas.nii", lambda: nifti((91, 109, 91)), FLAG, ARRAY, id="nifti-other"),
    pytest.param("pixels.pt", lambda: torch_file((3, 4096)), REFUSE, DATASET_PIXELS,
                 id="torch-series-size"),
    pytest.param("weights.pt", lambda: torch_file((10, 10)), FLAG, ARRAY, id="torch-other"),
    pytest.param("model.pkl", lambda: b"\x80\x04\x95" + b"\0" * 20, FLAG, ARRAY, id="pickle"),
    pytest.param("figure.png", png, FLAG, IMAGE, id="png"),
    pytest.param("counts.csv", lambda: b"site,n\nA,12\nB,3\n", FLAG, SMALL_COUNT,
                 id="csv-small-count"),
    pytest.param("counts.csv", lambda: b"site,n\nA,12\nB,0\n", FLAG, ZERO_COUNT,
                 id="csv-zero-count"),
    pytest.param("counts.csv", lambda: b"site,n,mean_age\nA,12,54.5\nB,10,3.2\n", PASS, None,
                 id="csv-all-counts-at-threshold"),
    pytest.param("counts.tsv", lambda: b"group\tcases\tcontrols\nx\t40\t11\ny\t25\t7\n", FLAG,
                 SMALL_COUNT, id="tsv-small-count"),
    pytest.param("table.txt", lambda: b"group;a;b\nx;40;11\ny;25;2\n", FLAG, SMALL_COUNT,
                 id="sniffed-semicolons"),
    pytest.param("by_year.csv", lambda: b"year,id,patients\n2019,1,120\n2020,2,130\n", PASS, None,
                 id="csv-years-and-ids-are-not-counts"),
    pytest.param("frame.csv", lambda: b",auc\n0,0.81\n1,0.79\n2,0.83\n", PASS, None,
                 id="csv-row-index-is-not-counts"),
    pytest.param("counts.json", lambda: json.dumps({"sites": {"A": 40, "B": 4}}).encode(), FLAG,
                 SMALL_COUNT, id="json-small-count"),
    pytest.param("summary.json", lambda: json.dumps({"n": 0, "auc": 0.8}).encode(), FLAG,
                 ZERO_COUNT, id="json-zero-count"),
    pytest.param("metrics.json", lambda: json.dumps({"auc": 0.81, "loss": 0.2}).encode(), PASS,
                 None, id="json-no-counts"),
    pytest.param("studies.txt", lambda: f"included:\n{STUDY_UID}\n{SERIES_UID}\n".encode(), FLAG,
                 IDENTIFIER, id="text-known-uids"),
    pytest.param("log.txt", lambda: b"subject SUBJ-0001_T1 done\n", FLAG, IDENTIFIER,
                 id="text-known-pseudonym"),
    pytest.param("log.txt", lambda: b"reading 1.2.840.113619.2.55.3.604688119 now\n", FLAG,
                 UID_LIKE, id="text-unknown-uid"),
    pytest.param("log.txt", lambda: b"uuid 2.25.329800735698586629295641978511506172918\n", FLAG,
                 UID_LIKE, id="text-uuid-uid"),
    pytest.param("readme.txt", lambda: b"version 1.2.3, accuracy 0.91.\nAll good.\n", PASS, None,
                 id="plain-text"),
    pytest.param("blob.bin", lambda: random_bytes(1 << 16, 1), PASS, None, id="random-binary"),
    pytest.param("group8.bin", lambda: b"\x08\x00" + random_bytes(4094, 2), PASS, None,
                 id="random-binary-starting-like-dicom"),
    pytest.param("empty.txt", lambda: b"", PASS, None, id="empty"),
    pytest.param("links.tar", lambda: tar_of(links={"escape": "/etc/passwd"}, **{"a.txt": b"hi"}),
                 FLAG, ARCHIVE_LINK, id="tar-symlink"),
    pytest.param("broken.zip", lambda: zip_of(**{"a.txt": b"x" * 100})[:60], REFUSE,
                 ARCHIVE_UNREADABLE, id="zip-truncated"),
    pytest.param("deep.zip", lambda: nested_zips(12), REFUSE, ARCHIVE_TOO_DEEP,
                 id="zip-nested-too-deep"),
]


@pytest.mark.parametrize(("name", "content", "verdict", "code"), CASES)
def test_file_verdict(name: str, content: Callable[[], bytes], verdict: str,
                      code: str | None) -> None:
    result = check_file(name, content(), KNOWN)
    assert result.verdict == verdict, result.findings
    if code is None:
        assert result.findings == ()
    else:
        assert code in result.codes, result.findings
        assert all(f.reason for f in result.findings)


def test_dicom_in_nested_archive_names_its_inner_path() -> None:
    data = tar_of(**{"inner.zip": zip_of(**{"scan.txt": dicom_file()})})
    (finding,) = check_file("outer.tar", data, KNOWN).findings
    assert finding.where == "outer.tar!inner.zip!scan.txt"


def test_small_count_reason_names_row_column_and_value() -> None:
    (finding,) = check_file("t.csv", b"site,n\nA,12\nB,3\n", KNOWN).findings
    assert finding.reason.startswith("row 3, column 'n': 3 is under the threshold of 10")


def test_threshold_comes_from_the_project() -> None:
    strict = Known(threshold=20)
    assert check_file("t.csv", b"site,n\nA,12\nB,30\n", strict).codes == (SMALL_COUNT,)


def test_uid_findings_are_capped() -> None:
    text = "".join(f"1.2.3.4.5.{i}\n" for i in range(100)).encode()
    findings = check_file("uids.txt", text, KNOWN).findings
    assert len(findings) == 11 and findings[-1].reason == "and 90 more like these"


@pytest.mark.parametrize("compress", [
    pytest.param("zip", id="zip"), pytest.param("gzip", id="gzip"),
    pytest.param("lying-zip", id="zip-with-false-size"),
])
def test_archive_bomb_is_refused_without_unpacking_it(compress: str) -> None:
    huge = 256 << 20
    if compress == "gzip":
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        chunk = b"\0" * (1 << 20)
        data = b"".join([compressor.compress(chunk) for _ in range(huge >> 20)]
                        + [compressor.flush()])
    else:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive, \
                archive.open("zeros.csv", "w", force_zip64=True) as member:
            for _ in range(huge >> 20):
                member.write(b"\0" * (1 << 20))
        data = out.getvalue()
        if compress == "lying-zip":  # the central directory claims a tiny member
            data = data.replace(struct.pack("<Q", huge), struct.pack("<Q", 10))
    assert len(data) < 2 << 20
    tracemalloc.start()
    try:
        result = check_file("bomb", data, KNOWN, ArchiveLimits(max_bytes=32 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.verdict == REFUSE
    assert result.codes in ((ARCHIVE_TOO_LARGE,), (ARCHIVE_UNREADABLE,))
    if compress != "lying-zip":
        assert result.codes == (ARCHIVE_TOO_LARGE,)
    assert peak < 80 << 20


def test_too_many_members_is_refused() -> None:
    data = zip_of(**{f"f{i}.txt": b"x" for i in range(20)})
    result = check_file("many.zip", data, KNOWN, ArchiveLimits(max_members=10))
    assert (result.verdict, result.codes) == (REFUSE, (ARCHIVE_TOO_LARGE,))


def test_nesting_within_the_limit_is_read() -> None:
    assert check_file("ok.zip", nested_zips(3), KNOWN).verdict == PASS
    result = check_file("deep.zip", nested_zips(4), KNOWN, ArchiveLimits(max_depth=2))
    assert (result.verdict, result.codes) == (REFUSE, (ARCHIVE_TOO_DEEP,))


LIMIT_CASES = [
    pytest.param([("a", 10), ("b", 10)], RequestLimits(max_files=1), (TOO_MANY_FILES,),
                 id="too-many-files"),
    pytest.param([("a", 10), ("b", 10)], RequestLimits(project_files_left=1), (TOO_MANY_FILES,),
                 id="project-files-left"),
    pytest.param([("a", 600), ("b", 600)], RequestLimits(max_bytes=1000), (TOO_LARGE,),
                 id="request-too-large"),
    pytest.param([("a", 600)], RequestLimits(project_bytes_left=500), (TOO_LARGE,),
                 id="project-bytes-left"),
    pytest.param([("a", 600)], RequestLimits(max_file_bytes=500), (TOO_LARGE,),
                 id="one-file-too-large"),
    pytest.param([("a", 600)], RequestLimits(max_files=1, max_bytes=600), (), id="within"),
]


@pytest.mark.parametrize(("files", "limits", "codes"), LIMIT_CASES)
def test_request_limits(files: list[tuple[str, int]], limits: RequestLimits,
                        codes: tuple[str, ...]) -> None:
    assert tuple(f.code for f in check_limits(files, limits)) == codes
    assert all(f.severity == REFUSE for f in check_limits(files, limits))


def test_request_verdict_is_the_worst_of_its_files() -> None:
    result = check_request([("ok.txt", b"fine\n"), ("t.csv", b"k,n\na,3\nb,40\n")], KNOWN,
                           RequestLimits(max_files=5))
    assert [f.verdict for f in result.files] == [PASS, FLAG]
    assert result.verdict == FLAG
    over = check_request([("ok.txt", b"fine\n")], KNOWN, RequestLimits(max_bytes=1))
    assert over.verdict == REFUSE


def test_check_path_reads_a_file_and_never_follows_links(tmp_path: Path) -> None:
    scan = tmp_path / "scan.txt"
    scan.write_bytes(dicom_file())
    assert check_path(scan, KNOWN).codes == (DICOM,)
    link = tmp_path / "link.txt"
    os.symlink(scan, link)
    assert check_path(link, KNOWN).codes == (UNREADABLE,)


def test_check_path_maps_large_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import portal.exports.checks as checks

    monkeypatch.setattr(checks, "READ_LIMIT", 10)
    path = tmp_path / "log.txt"
    path.write_bytes(b"first line\nreading 1.2.840.113619.2.55.3.604688119\n")
    (finding,) = check_path(path, KNOWN).findings
    assert (finding.code, finding.reason[:6]) == (UID_LIKE, "line 2")


def test_every_code_has_a_severity() -> None:
    assert set(CODES) == set(SEVERITY) and set(SEVERITY.values()) <= {PASS, FLAG, REFUSE}
