"""The automatic disclosure checks every file of an export request goes through before any
person reviews it: pure functions from a file's bytes (and what the project may see) to a
verdict. No database and no I/O apart from `check_path`, which reads one file safely.

Each file gets findings, each with a stable code, a severity and a reason a person can act on;
the file's verdict is its worst finding: `refuse` (it can never leave, whatever reviewers
say), `flag` (reviewers must look at what the reason names) or `pass`. Reviewers still see
every file; a pass only means no check found anything.

Files are recognised by their content, never by their name: the first bytes decide what a
file is (DICOM, an archive, an array, an image, text), so a renamed file is caught and most
files are classified without decoding them. Archives are opened in memory, nested to any
depth within `ArchiveLimits`, and every member is checked as a file of its own; a finding in
a member names its path as "outer.tar!inner.zip!scan.txt".

What is refused: a copy of a repository file (by SHA-256), anything DICOM (with or without
its preamble and "DICM" magic), and arrays or volumes whose shape or byte size is a granted
series' (NIfTI, NumPy, PyTorch). What is flagged: other images and arrays, small counts and
zeros in tables (statistical disclosure control with SACRO's minimum cell count), known
identifiers of the granted datasets, and anything shaped like a DICOM UID, in text (binary
files other than the formats above are left to reviewers, who see every file)."""

from __future__ import annotations

import ast
import bz2
import csv
import functools
import hashlib
import io
import json
import lzma
import math
import mmap
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# A file's content: bytes, or a read-only map of a large file (both slice to bytes and find).
Data = bytes | mmap.mmap
Severity = Literal["pass", "flag", "refuse"]
PASS: Severity = "pass"
FLAG: Severity = "flag"
REFUSE: Severity = "refuse"
_RANK = {PASS: 0, FLAG: 1, REFUSE: 2}

# Stable codes, with the severity each is always given.
REPOSITORY_FILE = "repository_file"
DICOM = "dicom"
DATASET_PIXELS = "dataset_pixels"
ARCHIVE_TOO_LARGE = "archive_too_large"
ARCHIVE_TOO_DEEP = "archive_too_deep"
ARCHIVE_UNREADABLE = "archive_unreadable"
ARCHIVE_LINK = "archive_link"
IMAGE = "image"
ARRAY = "array"
SMALL_COUNT = "small_count"
ZERO_COUNT = "zero_count"
IDENTIFIER = "identifier"
UID_LIKE = "uid_like"
TOO_LARGE = "too_large"
TOO_MANY_FILES = "too_many_files"
UNREADABLE = "unreadable"

SEVERITY: dict[str, Severity] = {
    REPOSITORY_FILE: REFUSE, DICOM: REFUSE, DATASET_PIXELS: REFUSE,
    ARCHIVE_TOO_LARGE: REFUSE, ARCHIVE_TOO_DEEP: REFUSE, ARCHIVE_UNREADABLE: REFUSE,
    ARCHIVE_LINK: FLAG, IMAGE: FLAG, ARRAY: FLAG, SMALL_COUNT: FLAG, ZERO_COUNT: FLAG,
    IDENTIFIER: FLAG, UID_LIKE: FLAG, TOO_LARGE: REFUSE, TOO_MANY_FILES: REFUSE,
    UNREADABLE: REFUSE,
}
CODES = tuple(SEVERITY)

# Findings of one code reported per file; more are summed up in one last finding, so a file
# full of UIDs gives a readable list rather than thousands of lines.
MAX_REPORTED = 10
# Tables and JSON larger than this are not parsed cell by cell (text checks still run): an
# aggregate table is small, and a larger one is record-level data reviewers must look at.
MAX_TABLE_BYTES = 16 << 20
# check_path reads files up to this size into memory and maps larger ones.
READ_LIMIT = 64 << 20
_HEAD = 8192


@dataclass(frozen=True)
class Known:
    """What the granted datasets are, built by the caller: hashes of every repository file,
    their series' pixel array shapes (whole volumes and single slices) and byte sizes, their
    identifiers (UIDs, pseudonyms, study ids), and the project's minimum cell count."""

    repository_hashes: frozenset[str] = frozenset()
    series_shapes: frozenset[tuple[int, ...]] = frozenset()
    series_sizes: frozenset[int] = frozenset()
    identifiers: frozenset[str] = frozenset()
    threshold: int = 10


@dataclass(frozen=True)
class ArchiveLimits:
    """How much work archives may cost, against archive bombs: total uncompressed bytes and
    members over the whole file (every nesting level together), and nesting depth."""

    max_bytes: int = 1 << 30
    max_members: int = 10_000
    max_depth: int = 8


@dataclass(frozen=True)
class Finding:
    """One thing a check found: stable code, severity, a reason a person can act on, and
    where (the file, or the path inside an archive as "outer.tar!inner.zip!file")."""

    code: str
    severity: Severity
    reason: str
    where: str


@dataclass(frozen=True)
class FileVerdict:
    """A file's findings and its verdict, the worst of them (pass when there are none)."""

    name: str
    sha256: str
    size: int
    findings: tuple[Finding, ...] = ()

    @property
    def verdict(self) -> Severity:
        return max((f.severity for f in self.findings), key=_RANK.__getitem__, default=PASS)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.code for f in self.findings))


@dataclass(frozen=True)
class RequestLimits:
    """Limits on one export request and what the project may still export (None: no limit).
    The project's allowance is what is left of it, counted by the caller."""

    max_files: int | None = None
    max_bytes: int | None = None
    max_file_bytes: int | None = None
    project_files_left: int | None = None
    project_bytes_left: int | None = None


@dataclass(frozen=True)
class RequestVerdict:
    """Each file's verdict and the findings about the request as a whole."""

    files: tuple[FileVerdict, ...]
    findings: tuple[Finding, ...] = ()

    @property
    def verdict(self) -> Severity:
        worst = [f.severity for f in self.findings] + [f.verdict for f in self.files]
        return max(worst, key=_RANK.__getitem__, default=PASS)


class _Refused(Exception):
    """An archive limit was hit: the whole file is refused, nothing further is read."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.reason)
        self.finding = finding


def _finding(code: str, reason: str, where: str) -> Finding:
    return Finding(code, SEVERITY[code], reason, where)


# -- Request limits --------------------------------------------------------------------------

def check_limits(files: Sequence[tuple[str, int]], limits: RequestLimits) -> tuple[Finding, ...]:
    """Findings for a request of (name, size) files against its limits and the project's."""
    count, total = len(files), sum(size for _, size in files)
    found: list[Finding] = []
    for most, what in ((limits.max_files, "a request"), (limits.project_files_left,
                                                          "the project's allowance")):
        if most is not None and count > most:
            found.append(_finding(TOO_MANY_FILES, f"{count} files, over the {most} {what} may "
                                  "hold; put them in fewer requests or one archive", "request"))
    for most, what in ((limits.max_bytes, "a request"), (limits.project_bytes_left,
                                                         "the project's allowance")):
        if most is not None and total > most:
            found.append(_finding(TOO_LARGE, f"{total} bytes, over the {most} {what} may hold; "
                                  "export less, or ask the project's steward", "request"))
    if limits.max_file_bytes is not None:
        for name, size in files:
            if size > limits.max_file_bytes:
                found.append(_finding(TOO_LARGE, f"{size} bytes, over the {limits.max_file_bytes}"
                                      " one file may have", name))
    return tuple(found)


def check_request(files: Sequence[tuple[str, bytes]], known: Known,
                  limits: RequestLimits = RequestLimits(),
                  archive_limits: ArchiveLimits = ArchiveLimits()) -> RequestVerdict:
    """Every file's verdict and the request's limits."""
    verdicts = tuple(check_file(name, data, known, archive_limits) for name, data in files)
    return RequestVerdict(verdicts, check_limits([(n, len(d)) for n, d in files], limits))


# -- One file --------------------------------------------------------------------------------

def check_file(name: str, data: Data, known: Known,
               limits: ArchiveLimits = ArchiveLimits()) -> FileVerdict:
    """The verdict on one file from its bytes. A copy of a repository file is refused at once;
    otherwise everything the file is (and every archive member) is checked."""
    digest = hashlib.sha256(data).hexdigest()
    if digest in known.repository_hashes:
        return FileVerdict(name, digest, len(data), (_finding(
            REPOSITORY_FILE, "a copy of a file of a granted dataset; the data itself can "
            "never be exported", name),))
    return FileVerdict(name, digest, len(data), _findings_of(name, data, known, limits))


def check_path(path: Path, known: Known, limits: ArchiveLimits = ArchiveLimits(),
               name: str | None = None) -> FileVerdict:
    """The verdict on a file on disk, opened without following links (a link, or anything
    but a regular file, is refused); small files are read, large ones mapped."""
    label = name if name is not None else path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return FileVerdict(label, "", 0, (_finding(
            UNREADABLE, f"cannot be opened ({error.strerror}); links are never followed", label),))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return FileVerdict(label, "", 0, (_finding(
                UNREADABLE, "not a regular file; only regular files can be exported", label),))
        if info.st_size <= READ_LIMIT:
            with os.fdopen(os.dup(fd), "rb", buffering=0) as file:
                data = file.read()
            return check_file(label, data, known, limits)
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
            return check_file(label, mapped, known, limits)
    finally:
        os.close(fd)


def _findings_of(name: str, data: Data, known: Known,
                 limits: ArchiveLimits) -> tuple[Finding, ...]:
    budget = _Budget(limits.max_bytes, limits.max_members)
    try:
        return tuple(_inspect(name, data, known, limits, budget, 0))
    except _Refused as refused:
        return (refused.finding,)


@dataclass
class _Budget:
    """What is left of the archive limits while one file is being opened."""

    bytes_left: int
    members_left: int


def _inspect(where: str, data: Data, known: Known, limits: ArchiveLimits,
             budget: _Budget, depth: int) -> Iterator[Finding]:
    """Findings for one file or archive member, by what its first bytes say it is."""
    head = bytes(data[:_HEAD])
    dicom = _dicom_kind(head)
    if dicom:
        yield _finding(DICOM, f"DICOM ({dicom}); image data of any kind can never be "
                       "exported, whatever its name", where)
        return
    archive = _archive_kind(head)
    if archive:
        yield from _archive(archive, where, data, known, limits, budget, depth)
        return
    array = _array_findings(where, head, data, known)
    if array is not None:
        yield from array
        return
    image = _image_kind(head)
    if image:
        yield _finding(IMAGE, f"a {image}; reviewers must check it shows no person or scan",
                       where)
    yield from _text_findings(where, data, known, head, image is None)


# -- DICOM -----------------------------------------------------------------------------------

# Groups a DICOM data set (or its file meta) starts with when written without its preamble.
_FIRST_GROUPS = frozenset({0x0002, 0x0008})
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                 b"UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _dicom_kind(head: bytes) -> str | None:
    """How the bytes are DICOM, or None: the "DICM" magic after the preamble, or a data set
    written without it (implicit or explicit VR) with a plausible run of elements."""
    if head[128:132] == b"DICM":
        return "a DICOM file by its 'DICM' magic"
    if head[:4] == b"DICM":
        return "a DICOM file by its 'DICM' magic, without its preamble"
    for little in (True, False):
        for explicit in (False, True):
            if not little and not explicit:
                continue
            first = _plausible_elements(head, little, explicit)
            if first is not None:
                syntax = "explicit" if explicit else "implicit"
                order = "little" if little else "big"
                return (f"a headerless data set, {syntax} VR {order} endian, starting with "
                        f"({first >> 16:04X},{first & 0xFFFF:04X})")
    return None


@functools.cache
def _dictionary_has() -> Any:
    from pydicom.datadict import dictionary_has_tag

    return dictionary_has_tag


def _plausible_elements(head: bytes, little: bool, explicit: bool) -> int | None:
    """The first tag when the bytes open with at least three well-formed elements of a DICOM
    data set in this transfer syntax (ascending tags, even groups, lengths that fit, tags in
    the DICOM dictionary), or the whole file is one or two such elements."""
    end = "<" if little else ">"
    if len(head) < 8:
        return None
    group = struct.unpack_from(end + "H", head, 0)[0]
    if group not in _FIRST_GROUPS:
        return None
    has = _dictionary_has()
    offset, previous, count, known_tags, first = 0, -1, 0, 0, None
    while count < 6 and offset + 8 <= len(head):
        group, element = struct.unpack_from(end + "HH", head, offset)
        tag = group << 16 | element
        if group % 2 or tag <= previous or group > 0x7FE0:
            return None
        if explicit:
            vr = head[offset + 4:offset + 6]
            if vr not in _VRS:
                return None
            if vr in _LONG_VRS:
                if offset + 12 > len(head) or head[offset + 6:offset + 8] != b"\0\0":
                    return None
                length = struct.unpack_from(end + "I", head, offset + 8)[0]
                offset += 12
            else:
                length = struct.unpack_from(end + "H", head, offset + 6)[0]
                offset += 8
        else:
            length = struct.unpack_from(end + "I", head, offset + 4)[0]
            offset += 8
        count += 1
        known_tags += bool(has(tag))
        first = tag if first is None else first
        previous = tag
        if length == 0xFFFFFFFF:  # a sequence or encapsulated pixels: no more to walk
            break
        if length % 2 or length > 1 << 30:
            return None
        offset += length
        if offset >= len(head):
            break
    whole = offset == len(head) and len(head) < _HEAD
    if known_tags >= 2 and (count >= 3 or (whole and count >= 2)):
        return first
    return None


# -- Archives --------------------------------------------------------------------------------

def _archive_kind(head: bytes) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:6] == b"7z\xbc\xaf\x27\x1c" or head[:4] == b"Rar!" or head[:4] == b"\x28\xb5\x2f\xfd":
        return "unsupported"
    return None


def _archive(kind: str, where: str, data: Data, known: Known,
             limits: ArchiveLimits, budget: _Budget, depth: int) -> Iterator[Finding]:
    if kind == "unsupported":
        yield _finding(ARCHIVE_UNREADABLE, "a 7z, RAR or zstd archive, which cannot be checked; "
                       "export a zip or tar archive instead", where)
        return
    if depth >= limits.max_depth:
        raise _Refused(_finding(ARCHIVE_TOO_DEEP, f"archives nested deeper than "
                                f"{limits.max_depth}; export the files unnested", where))
    try:
        if kind == "zip":
            members = _zip_members(where, data, budget, limits, known)
        elif kind == "tar":
            members = _tar_members(where, data, budget, limits)
        else:
            members = _compressed_member(kind, where, data, budget, limits)
        for member in members:
            if isinstance(member, Finding):
                yield member
            else:
                inner, content = member
                yield from _inspect(inner, content, known, limits, budget, depth + 1)
    except _Refused:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError,
            ValueError, NotImplementedError, RuntimeError) as error:
        yield _finding(ARCHIVE_UNREADABLE, f"a {kind} archive that cannot be read ({error}); "
                       "what cannot be read cannot be checked, export it again", where)


def _too_large(where: str, limits: ArchiveLimits) -> _Refused:
    return _Refused(_finding(ARCHIVE_TOO_LARGE, f"archive contents over {limits.max_bytes} "
                             f"bytes or {limits.max_members} members unpacked; export the "
                             "files themselves, or fewer of them", where))


def _take(budget: _Budget, where: str, limits: ArchiveLimits, size: int = 0) -> None:
    budget.members_left -= 1 if size == 0 else 0
    budget.bytes_left -= size
    if budget.members_left < 0 or budget.bytes_left < 0:
        raise _too_large(where, limits)


def _read_bounded(stream: io.RawIOBase | io.BufferedIOBase | Any, budget: _Budget, where: str,
                  limits: ArchiveLimits) -> bytes:
    """All of a stream, charged to the budget as it is read, refused the moment it is over."""
    parts = []
    while chunk := stream.read(1 << 20):
        _take(budget, where, limits, len(chunk))
        parts.append(chunk)
    return b"".join(parts)


Member = tuple[str, bytes] | Finding


def _zip_members(where: str, data: Data, budget: _Budget, limits: ArchiveLimits,
                 known: Known) -> Iterator[Member]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        torch = _torch_finding(infos, known, where)
        if torch is not None:
            yield torch
            return
        for info in infos:
            inner = f"{where}!{info.filename}"
            _take(budget, inner, limits)
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                yield _finding(ARCHIVE_LINK, "a link inside a zip archive, which is never "
                               "followed; remove it and add the file itself", inner)
                continue
            if info.flag_bits & 0x1:
                yield _finding(ARCHIVE_UNREADABLE, "an encrypted member, which cannot be "
                               "checked; export it unencrypted", inner)
                continue
            if info.file_size > budget.bytes_left:
                raise _too_large(inner, limits)
            with archive.open(info) as stream:
                yield inner, _read_bounded(stream, budget, inner, limits)


def _tar_members(where: str, data: Data, budget: _Budget,
                 limits: ArchiveLimits) -> Iterator[Member]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for info in archive:
            inner = f"{where}!{info.name}"
            _take(budget, inner, limits)
            if info.isdir():
                continue
            if info.issym() or info.islnk():
                yield _finding(ARCHIVE_LINK, f"a link to {info.linkname!r} inside a tar archive, "
                               "which is never followed; remove it and add the file itself",
                               inner)
                continue
            if not info.isfile():
                yield _finding(ARCHIVE_LINK, "a device, FIFO or other special member inside a "
                               "tar archive, which is never read; remove it", inner)
                continue
            if info.size > budget.bytes_left:
                raise _too_large(inner, limits)
            stream = archive.extractfile(info)
            if stream is not None:
                yield inner, _read_bounded(stream, budget, inner, limits)


_DECOMPRESSORS = {"gzip": lambda: zlib.decompressobj(wbits=31), "bz2": bz2.BZ2Decompressor,
                  "xz": lzma.LZMADecompressor}
_SUFFIXES = {"gzip": (".gz", ".tgz"), "bz2": (".bz2", ".tbz2"), "xz": (".xz", ".txz")}


def _compressed_member(kind: str, where: str, data: Data, budget: _Budget,
                       limits: ArchiveLimits) -> Iterator[Member]:
    """The one file inside gzip, bz2 or xz, decompressed a bounded piece at a time (the
    stated size of a gzip is not trusted). Concatenated gzip members are read as one."""
    base = where.rsplit("!", 1)[-1]
    inner_name = base
    for suffix in _SUFFIXES[kind]:
        if base.lower().endswith(suffix):
            inner_name = base[: -len(suffix)] + (".tar" if suffix.startswith(".t") else "")
            break
    inner = f"{where}!{inner_name if inner_name != base else base + '.out'}"
    _take(budget, inner, limits)
    parts: list[bytes] = []
    pending = bytes(data)
    while pending:
        decompressor = _DECOMPRESSORS[kind]()
        step = 1 << 20
        chunk = decompressor.decompress(pending, step)
        while True:
            _take(budget, inner, limits, len(chunk))
            parts.append(chunk)
            if _finished(decompressor):
                break
            if kind == "gzip":
                more = decompressor.unconsumed_tail
                chunk = decompressor.decompress(more, step)
                if not chunk and not more:
                    raise EOFError("compressed data ends early")
            else:
                chunk = decompressor.decompress(b"", step)
                if not chunk and decompressor.needs_input:
                    raise EOFError("compressed data ends early")
        pending = decompressor.unused_data.lstrip(b"\0") if kind == "gzip" else b""
    yield inner, b"".join(parts)


def _finished(decompressor: Any) -> bool:
    return bool(decompressor.eof)


# -- Arrays, volumes and images --------------------------------------------------------------

def _matching(shape: tuple[int, ...], nbytes: int | None, known: Known) -> str | None:
    """Why an array's shape or byte size is a granted series' (in either axis order, with
    axes of length 1 dropped, or any stack of a series' slices), or None."""
    squeezed = tuple(d for d in shape if d != 1)
    for candidate in (shape, squeezed, shape[::-1], squeezed[::-1]):
        if candidate in known.series_shapes:
            return f"shape {candidate} is a granted series'"
        if len(candidate) >= 2 and candidate[-2:] in known.series_shapes:
            return f"each slice of shape {candidate[-2:]} is a granted series' slice"
    if nbytes is not None and nbytes in known.series_sizes:
        return f"its {nbytes} bytes of data are a granted series' size"
    return None


def _array_verdict(kind: str, shape: tuple[int, ...] | None, nbytes: int | None, known: Known,
                   where: str) -> Finding:
    match = _matching(shape or (), nbytes, known) if shape is not None or nbytes else None
    if match:
        return _finding(DATASET_PIXELS, f"a {kind} whose {match}: dataset pixels in another "
                        "format can never be exported; export results computed from them", where)
    described = f" of shape {shape}" if shape is not None else ""
    return _finding(ARRAY, f"a {kind}{described}; reviewers must check it holds no image data or "
                    "record-level values", where)


def _array_findings(where: str, head: bytes, data: Data,
                    known: Known) -> list[Finding] | None:
    """A finding for an array or volume (NumPy, NIfTI, a pickle), or None if it is none."""
    if head[:6] == b"\x93NUMPY":
        shape, nbytes = _npy_header(head)
        return [_array_verdict("NumPy array", shape, nbytes, known, where)]
    nifti = _nifti_header(head)
    if nifti is not None:
        return [_array_verdict("NIfTI volume", nifti[0], nifti[1], known, where)]
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return [_finding(ARRAY, "a Python pickle, which is never loaded here (and should not be "
                         "anywhere); export its values as CSV or .npy", where)]
    return None


_DTYPE_SIZE = re.compile(r"^[<>|=]?([biufcmMSUV])(\d+)")


def _npy_header(head: bytes) -> tuple[tuple[int, ...] | None, int | None]:
    """Shape and data bytes from a .npy header, read as a literal and never unpickled."""
    try:
        major = head[6]
        if major == 1:
            length, start = struct.unpack_from("<H", head, 8)[0], 10
        else:
            length, start = struct.unpack_from("<I", head, 8)[0], 12
        text = head[start:start + length].decode("latin-1")
        if len(text) < length:
            return None, None
        header = ast.literal_eval(text)
        shape = tuple(int(d) for d in header["shape"])
        match = _DTYPE_SIZE.match(header["descr"]) if isinstance(header["descr"], str) else None
        if match is None:
            return shape, None
        itemsize = int(match.group(2)) * (4 if match.group(1) == "U" else 1)
        return shape, math.prod(shape) * itemsize
    except (ValueError, SyntaxError, KeyError, TypeError, IndexError, struct.error,
            MemoryError, RecursionError):
        return None, None


def _nifti_header(head: bytes) -> tuple[tuple[int, ...], int] | None:
    """Dimensions and data bytes of a NIfTI-1 or NIfTI-2 header (either byte order)."""
    for end in "<>":
        if len(head) >= 348 and struct.unpack_from(end + "i", head, 0)[0] == 348 \
                and head[344:348] in (b"n+1\0", b"ni1\0"):
            dims = struct.unpack_from(end + "8h", head, 40)
            bitpix = struct.unpack_from(end + "h", head, 72)[0]
        elif len(head) >= 540 and struct.unpack_from(end + "i", head, 0)[0] == 540 \
                and head[4:8] in (b"n+2\0", b"ni2\0"):
            dims = struct.unpack_from(end + "8q", head, 16)
            bitpix = struct.unpack_from(end + "h", head, 14)[0]
        else:
            continue
        ndim = max(0, min(int(dims[0]), 7))
        shape = tuple(int(d) for d in dims[1:ndim + 1])
        return shape, math.prod(shape) * max(int(bitpix), 0) // 8
    return None


def _torch_finding(infos: list[zipfile.ZipInfo], known: Known, where: str) -> Finding | None:
    """The finding for a torch.save file (a zip holding "<name>/data.pkl" and its tensors'
    storages under "<name>/data/"), from the storages' sizes alone: the pickle is never read,
    so shapes are unknown and a storage of a granted series' byte size is refused."""
    roots = sorted(info.filename[: -len("data.pkl")] for info in infos
                   if info.filename.endswith("data.pkl") and info.filename.count("/") <= 1)
    if not roots:
        return None
    sizes = [info.file_size for info in infos
             if info.filename.startswith(roots[0] + "data/") and not info.is_dir()]
    for size in sizes:
        if size in known.series_sizes:
            return _finding(DATASET_PIXELS, f"a PyTorch file holding a tensor of {size} bytes, a "
                            "granted series' size: dataset pixels in another format can never be "
                            "exported; export results computed from them", where)
    return _finding(ARRAY, f"a PyTorch file of {len(sizes)} tensor storage(s) "
                    f"({sum(sizes)} bytes); reviewers must check it holds no image data (model "
                    "weights can memorise training data)", where)


_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"\xff\xd8\xff", "JPEG image"),
    (b"II*\x00", "TIFF image"), (b"MM\x00*", "TIFF image"), (b"II+\x00", "BigTIFF image"),
    (b"MM\x00+", "BigTIFF image"), (b"GIF87a", "GIF image"), (b"GIF89a", "GIF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image"), (b"\xff\x4f\xff\x51",
                                                            "JPEG 2000 codestream"),
    (b"%PDF-", "PDF document"),
)


def _image_kind(head: bytes) -> str | None:
    for magic, kind in _IMAGE_MAGIC:
        if head.startswith(magic):
            if kind == "PNG image" and len(head) >= 24:
                width, height = struct.unpack_from(">II", head, 16)
                return f"PNG image of {width}x{height} pixels"
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP image"
    if head[:2] == b"BM" and len(head) >= 26 and struct.unpack_from("<I", head, 2)[0] > 26 \
            and head[6:10] == b"\0\0\0\0":
        return "BMP image"
    return None


# -- Text: identifiers and UIDs --------------------------------------------------------------

_TOKEN = re.compile(rb"[A-Za-z0-9._\-]+")
_WORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._\-]*")
_UID = re.compile(rb"(?:1\.2|2\.25)(?:\.(?:0|[1-9][0-9]*))+")
_ALNUM_DOT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")
# More distinct 4-byte prefixes than this and identifiers are looked up word by word instead
# of searched for prefix by prefix.
_MAX_PREFIXES = 32


@functools.lru_cache(maxsize=16)
def _identifier_index(identifiers: frozenset[str]) -> tuple[frozenset[bytes], tuple[bytes, ...]]:
    """Identifiers as bytes and their distinct first four bytes (empty when too many). Those
    shaped like UIDs are left to the UID scan, which finds every one of them anyway."""
    encoded = frozenset(i.encode() for i in identifiers if i and not _uid_shaped(i.encode()))
    prefixes = sorted({e[:4] for e in encoded})
    return encoded, tuple(prefixes) if len(prefixes) <= _MAX_PREFIXES else ()


def _starts_word(data: Data, pos: int) -> bool:
    return pos == 0 or data[pos - 1] not in _ALNUM_DOT


def _candidates(token: bytes) -> set[bytes]:
    """A word and its prefixes up to each '-' or '_' ("SUBJ-0001_T1" holds "SUBJ-0001"), and
    the word without trailing punctuation (a UID ending a sentence)."""
    found = {token, token.rstrip(b"._-")}
    found.update(token[:i] for i, byte in enumerate(token) if byte in b"-_")
    return found


def _identifier_hits(data: Data, known: Known) -> Iterator[tuple[int, str]]:
    encoded, prefixes = _identifier_index(known.identifiers)
    if not encoded:
        return
    if prefixes:
        for prefix in prefixes:
            pos = data.find(prefix)
            while pos != -1:
                match = _TOKEN.match(data, pos)
                end = match.end() if match else pos + 1
                if match and _starts_word(data, pos):
                    for candidate in _candidates(match.group()) & encoded:
                        yield pos, candidate.decode()
                pos = data.find(prefix, end)
    else:
        for match in _WORD.finditer(data):
            for candidate in _candidates(match.group()) & encoded:
                yield match.start(), candidate.decode()


def _uid_hits(data: Data) -> Iterator[tuple[int, str]]:
    """Strings shaped like DICOM UIDs: a "1.2." root with at least five components, or a
    "2.25." UUID-derived UID (three components, the last one long)."""
    for prefix in (b"1.2.", b"2.25."):
        pos = data.find(prefix)
        while pos != -1:
            match = _UID.match(data, pos)
            end = match.end() if match else pos + 1
            if match and _starts_word(data, pos) and _uid_shaped(match.group()):
                yield pos, match.group().decode()
            pos = data.find(prefix, end)


def _uid_shaped(value: bytes) -> bool:
    if _UID.fullmatch(value) is None:
        return False
    parts = value.split(b".")
    return (parts[1] == b"2" and len(parts) >= 5) or \
        (parts[1] == b"25" and len(parts) == 3 and len(parts[2]) >= 10)


def _place(data: Data, pos: int, text: bool) -> str:
    if not text:
        return f"byte {pos}"
    before = data.count(b"\n", 0, pos) if isinstance(data, bytes) else data[:pos].count(b"\n")
    return f"line {before + 1}"


def _capped(findings: Iterable[tuple[str, str]], where: str) -> Iterator[Finding]:
    """Findings of each code up to MAX_REPORTED, then one that says how many more."""
    seen: dict[str, set[str]] = {}
    more: dict[str, int] = {}
    for code, reason in findings:
        values = seen.setdefault(code, set())
        if len(values) < MAX_REPORTED:
            values.add(reason)
            yield _finding(code, reason, where)
        else:
            more[code] = more.get(code, 0) + 1
    for code, count in more.items():
        yield _finding(code, f"and {count} more like these", where)


def _text_scan(data: Data, known: Known, text: bool) -> Iterator[tuple[str, str]]:
    known_hits = sorted(set(_identifier_hits(data, known)))
    reported: set[str] = set()
    for pos, value in known_hits:
        if value not in reported:
            reported.add(value)
            yield IDENTIFIER, (f"{_place(data, pos, text)}: contains {value}, an identifier of a "
                               "granted dataset (a UID, pseudonym or study id); remove it or "
                               "replace it with a code of your own")
    for pos, value in sorted(_uid_hits(data)):
        if value in reported:
            continue
        reported.add(value)
        if value in known.identifiers:
            yield IDENTIFIER, (f"{_place(data, pos, text)}: contains {value}, a UID of a granted "
                               "dataset; remove it or replace it with a code of your own")
        else:
            yield UID_LIKE, (f"{_place(data, pos, text)}: contains {value}, shaped like a DICOM "
                             "UID; reviewers must check it does not name a study, series or "
                             "image")


def _looks_like_text(head: bytes) -> bool:
    """No NUL byte, and UTF-8 (a character cut at the end is fine) or latin-1 with hardly
    any control characters."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 3 and error.reason == "unexpected end of data":
            return True
    controls = sum(head.count(bytes([c])) for c in (*range(1, 9), 11, *range(14, 32), 127))
    return controls * 100 <= len(head)


def _text_findings(where: str, data: Data, known: Known, head: bytes,
                   maybe_table: bool) -> Iterator[Finding]:
    text = _looks_like_text(head)
    found: list[tuple[str, str]] = []
    if text and maybe_table and len(data) <= MAX_TABLE_BYTES:
        found.extend(_table_scan(where, data, head, known.threshold))
    if text:  # binary formats are recognised by their magic above, or left to reviewers
        found.extend(_text_scan(data, known, text))
    yield from _capped(found, where)


# -- Tables: small counts and zeros ----------------------------------------------------------

# Header words that say a column holds counts, and words that say it does not (identifiers,
# dates and settings whose small integers are not people).
_COUNT_TEXT = (
    "n count counts num number freq frequency total totals patients patient subjects subject "
    "cases case participants people persons individuals events deaths admissions records "
    "studies images scans positives negatives tp fp tn fn")
_NOT_COUNT_TEXT = (
    "id ids uid key code index idx row rank year years date month day week age zip postcode "
    "version seed epoch epochs step steps fold batch size dim layer layers class label "
    "site grade stage level port")
_COUNT_WORDS = frozenset(_COUNT_TEXT.split())
_NOT_COUNT_WORDS = frozenset(_NOT_COUNT_TEXT.split())
_INT = re.compile(r"\s*\"?\s*(\d+)\s*\"?\s*")
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_SPLIT = re.compile(r"[^a-z0-9]+")
_DELIMITERS = (",", "\t", ";", "|")


def _decode(data: Data) -> str:
    raw = bytes(data)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _delimiter(head: bytes) -> str | None:
    """The delimiter that splits the first lines into the same number (>1) of cells."""
    lines = [line for line in head.decode("latin-1").splitlines()[:20] if line.strip()]
    if len(head) >= _HEAD and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut short
    if len(lines) < 2:
        return None
    for delimiter in _DELIMITERS:
        widths = {len(row) for row in csv.reader(lines, delimiter=delimiter)}
        if len(widths) == 1 and widths.pop() > 1:
            return delimiter
    return None


def _might_hold_small(data: Data, delimiter: str, threshold: int) -> bool:
    """Whether any cell could be an integer under the threshold, so tables of only large
    numbers and decimals are never parsed cell by cell. Digits are read as "0", delimiters
    and line ends as one separator, quotes and spaces dropped: a short integer cell is then
    a short run of "0" between separators, which bytes.find finds at memory speed."""
    digits = max(1, len(str(max(threshold - 1, 0))))
    masked = b"\n" + bytes(data).translate(_masks(delimiter), b' "') + b"\n"
    return any(masked.find(b"\n" + b"0" * length + b"\n") != -1
               for length in range(1, digits + 1))


@functools.cache
def _masks(delimiter: str) -> bytes:
    return bytes.maketrans(b"123456789\r" + delimiter.encode(), b"000000000\n\n")


def _words(name: str) -> set[str]:
    return set(_SPLIT.split(name.lower())) - {""}


def _is_count_column(name: str, values: list[str]) -> bool:
    """Counts by the header's words, or (for a header that says nothing) when every number
    in the column is a non-negative integer, unless those are years or a row index."""
    words = _words(name)
    if words & _COUNT_WORDS:
        return True
    if words & _NOT_COUNT_WORDS:
        return False
    numbers = [v for v in values if _NUMBER.fullmatch(v)]
    if not numbers or not all(_INT.fullmatch(v) for v in numbers):
        return False
    ints = [int(v.strip().strip('"')) for v in numbers]
    if all(1800 <= i <= 2100 for i in ints):
        return False
    return not (len(ints) > 2 and ints == list(range(ints[0], ints[0] + len(ints)))
                and ints[0] in (0, 1))


def _table_scan(where: str, data: Data, head: bytes, threshold: int) -> list[tuple[str, str]]:
    lower = where.lower()
    if lower.endswith(".json") or head.lstrip()[:1] in (b"{", b"["):
        return _json_scan(data, threshold)
    delimiter = "\t" if lower.endswith((".tsv", ".tab")) else _delimiter(head)
    if delimiter is None or not _might_hold_small(data, delimiter, threshold):
        return []
    rows = list(csv.reader(io.StringIO(_decode(data)), delimiter=delimiter))
    if not rows:
        return []
    header = rows[0]
    has_header = any(cell.strip() and not _NUMBER.fullmatch(cell) for cell in header)
    body_start = 1 if has_header else 0
    width = max(len(row) for row in rows)
    found: list[tuple[str, str]] = []
    for column in range(width):
        name = header[column].strip() if has_header and column < len(header) else ""
        label = f"column {name!r}" if name else f"column {column + 1}"
        values = [row[column] for row in rows[body_start:] if column < len(row)]
        if not _is_count_column(name, values):
            continue
        for index, row in enumerate(rows[body_start:], start=body_start + 1):
            if column < len(row):
                finding = _small(row[column], f"row {index}, {label}", threshold)
                if finding:
                    found.append(finding)
    return found


def _small(cell: str | int, place: str, threshold: int) -> tuple[str, str] | None:
    if isinstance(cell, str):
        match = _INT.fullmatch(cell)
        if not match:
            return None
        cell = int(match.group(1))
    if cell == 0:
        return ZERO_COUNT, (f"{place}: a zero count, which can disclose too (everyone in the "
                            "group has, or lacks, something); check it is structural or "
                            "suppress it")
    if 0 < cell < threshold:
        return SMALL_COUNT, (f"{place}: {cell} is under the threshold of {threshold}; suppress "
                             f"it, or combine groups until every count is at least {threshold}")
    return None


def _json_scan(data: Data, threshold: int) -> list[tuple[str, str]]:
    """Counts in JSON: integers under count-like keys, or among siblings that are all
    non-negative integers (a dict or list of counts)."""
    try:
        document = json.loads(_decode(data))
    except (ValueError, RecursionError):
        return []
    found: list[tuple[str, str]] = []

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def walk(node: object, path: str, key: str) -> None:
        if isinstance(node, dict):
            items = [(str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            items = [(key, v) for v in node]
        else:
            return
        numbers = [v for _, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
        all_counts = bool(numbers) and all(is_int(v) and v >= 0 for v in numbers) and \
            not all(1800 <= v <= 2100 for v in numbers)
        for position, (name, value) in enumerate(items):
            here = f"{path}.{name}" if isinstance(node, dict) else f"{path}[{position}]"
            if is_int(value):
                words = _words(name)
                counts = bool(words & _COUNT_WORDS) or (all_counts and not
                                                        words & _NOT_COUNT_WORDS)
                finding = _small(value, here, threshold) if counts else None
                if finding:
                    found.append(finding)
            else:
                walk(value, here, name)

    walk(document, "$", "")
    return found
