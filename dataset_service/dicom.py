"""The DICOM core of ingestion: read and validate instance headers (never pixels), check
de-identification, group instances into studies, and hash study and dataset contents.

Pure functions from files and datasets to data: no database, no HTTP, no copying.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import logging
import math
import os
import re
import statistics
import struct
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from vre.config import ConfigError

# Why a file is refused; stable, clients and quarantine records depend on them.
REASON_CODES = (
    "not_dicom",  # no 128-byte preamble + "DICM": not a DICOM Part 10 file
    "malformed",  # Part 10, but its header cannot be parsed, or lacks the Image Pixel module
    "truncated",  # the file ends early, or Pixel Data is shorter than the image needs
    "missing_uid",  # a required UID is absent or not a valid UID (the message says which)
    "unsupported",  # no Pixel Data (not an image), or an unknown or deflated transfer
    # syntax (deflated Pixel Data cannot be checked without inflating the whole file)
    "identifying_data",  # breaks the de-identification policy (the message names attributes)
)
# A message never quotes a value of the file: a refused value may be the very identifier
# that had to go. Messages name attributes, tags, byte offsets and lengths only.
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
PROBLEM_CODES = ("patient_conflict", "series_conflict", "duplicate_instance", "subject_conflict")

# PS3.15 Annex E, Basic Application Level Confidentiality Profile: attributes whose action
# is X (remove) or Z (empty), so that absent or empty is compliant. Kept on purpose, as by
# the Retain Patient Characteristics and Retain Longitudinal Temporal Information options:
# PatientSex/Age/Size/Weight and the study dates, which research needs. EthnicGroup is
# removed even so: a special category of personal data (GDPR art. 9), allow it if needed.
BASIC_PROFILE_FORBIDDEN = frozenset({
    "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientTelecomInformation", "PatientMotherBirthName",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID",
    "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "EthnicGroup",
    "PatientReligiousPreference", "Occupation", "PatientComments", "AdditionalPatientHistory",
    "PatientInsurancePlanCodeSequence", "RegionOfResidence", "CountryOfResidence",
    "CurrentPatientLocation", "ResponsiblePerson", "ResponsibleOrganization", "AdmissionID",
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName",
    "OperatorIdentificationSequence", "RequestingPhysician", "RequestAttributesSequence",
    "StationName", "DeviceSerialNumber", "AccessionNumber", "PerformedStationName",
    "PerformedLocation",
})  # fmt: skip
DEFAULT_PSEUDONYM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Identifiers in free text: e-mail addresses, phone-like runs of 9 to 15 digits, calendar
# dates (a free-text date escapes date handling and may be a birth date), birth keywords.
DEFAULT_IDENTIFIER_PATTERNS = (
    r"[\w.+-]+@[\w-]+(\.[\w-]+)+",
    r"(?<![\w.])\+?\d([ ()/-]{0,2}\d){8,14}(?![\w.])",
    r"(?<!\d)(19|20)\d\d[-/.](0?[1-9]|1[0-2])[-/.](0?[1-9]|[12]\d|3[01])(?!\d)",
    r"(?<!\d)(0?[1-9]|[12]\d|3[01])[-/.](0?[1-9]|1[0-2])[-/.](19|20)\d\d(?!\d)",
    r"(?i)\b(d\.?o\.?b\b|date of birth|birth ?date|born)",
)
FREE_TEXT_VRS = frozenset({"LO", "LT", "ST", "UT", "SH", "UC"})
# PS3.5 6.2: the form of each value of a date (DA), time (TM), date-time (DT), age (AS) and
# number (DS, IS), legacy ACR-NEMA "HH:MM:SS" times included. Anything else in such a field
# (a name, a record number) is not what the field holds, so it is treated as identifying.
_VALUE_FORMS = {
    "DA": re.compile(r"(19|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])|1[89]\d\d\d{4}"),
    "TM": re.compile(
        r"([01]\d|2[0-3])(([0-5]\d)(([0-5]\d|60)(\.\d{1,6})?)?)?"
        r"|([01]\d|2[0-3]):[0-5]\d(:([0-5]\d|60)(\.\d{1,6})?)?"
    ),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"),
    "AS": re.compile(r"\d{3}[DWMY]"),
    "DS": re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"),
    "IS": re.compile(r"[+-]?\d+"),
}
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
# Explicit VRs whose element header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_LENGTH_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_ITEM, _SEQUENCE_DELIMITER, _UNDEFINED = 0xFFFEE000, 0xFFFEE0DD, 0xFFFFFFFF


class InvalidInstance(Exception):
    """A file refused at ingestion: ``reason_code`` is one of REASON_CODES."""

    def __init__(self, reason_code: str, message: str) -> None:
        if reason_code not in REASON_CODES:
            raise ValueError(f"unknown reason code {reason_code!r}")
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message
        # The study the file claims, when its header could be read: ingestion keeps that
        # whole study out. None for files not DICOM enough to tell.
        self.study_uid: str | None = None
        # Its series likewise, when it names a valid one: a file that cannot name its study
        # still takes out the study of the series it shares with other files.
        self.series_uid: str | None = None


@dataclass(frozen=True)
class DeidPolicy:
    """What a de-identified instance must look like (after PS3.15 Annex E, Basic Profile).

    ``forbidden`` attributes must be absent or empty; ``allowed`` exempts keywords (and the
    contents of sequences) from every rule; PatientID must match ``pseudonym_pattern`` and
    PatientName be empty or equal to it; PatientIdentityRemoved must be "YES" if
    ``require_identity_removed``; any other non-empty person name (PN), and free text (VRs in
    FREE_TEXT_VRS) matching ``identifier_patterns``, is refused; private tags are refused
    unless ``allow_private_tags`` (they are where vendors keep what the profile cannot see).
    """

    forbidden: frozenset[str] = BASIC_PROFILE_FORBIDDEN
    allowed: frozenset[str] = frozenset()
    pseudonym_pattern: re.Pattern[str] = re.compile(DEFAULT_PSEUDONYM_PATTERN)
    require_identity_removed: bool = True
    allow_private_tags: bool = False
    identifier_patterns: tuple[re.Pattern[str], ...] = tuple(
        re.compile(p) for p in DEFAULT_IDENTIFIER_PATTERNS
    )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DeidPolicy:
        """A policy from configuration (e.g. a TOML table); a ConfigError names the bad key."""
        fields = {}
        for key, value in mapping.items():
            if key in ("forbidden", "allowed"):
                fields[key] = frozenset(_keywords(key, value))
            elif key in ("require_identity_removed", "allow_private_tags"):
                if not isinstance(value, bool):
                    raise ConfigError(key, f"must be true or false, got {value!r}")
                fields[key] = value
            elif key == "pseudonym_pattern":
                fields[key] = _regex(key, value)
            elif key == "identifier_patterns":
                fields[key] = tuple(_regex(key, p) for p in _strings(key, value))
            else:
                raise ConfigError(key, "unknown de-identification policy key")
        return cls(**fields)


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return list(value)


def _keywords(key: str, value: Any) -> list[str]:
    keywords = _strings(key, value)
    if unknown := [k for k in keywords if tag_for_keyword(k) is None]:
        raise ConfigError(key, f"not DICOM keywords: {', '.join(unknown)}")
    return keywords


def _regex(key: str, value: Any) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except (re.error, TypeError) as exc:
        raise ConfigError(key, f"not a regular expression: {value!r} ({exc})") from exc


def check_deidentified(ds: Dataset, policy: DeidPolicy) -> list[str]:
    """The keywords (sorted) of attributes in ``ds`` that break ``policy``; empty if none.

    Sequences are searched too; private tags are reported per group as ``(gggg,xxxx)``.
    """
    found = _pseudonym_findings(ds, policy)
    _scan(ds, policy, found, top_level=True)
    return sorted(found - policy.allowed)


def _pseudonym_findings(ds: Dataset | _Values, policy: DeidPolicy) -> set[str]:
    """The pseudonym's own rules: PatientID, PatientName and PatientIdentityRemoved."""
    found: set[str] = set()
    pseudonym = _text(ds, "PatientID")
    if not policy.pseudonym_pattern.fullmatch(pseudonym):
        found.add("PatientID")
    if _text(ds, "PatientName") not in ("", pseudonym):
        found.add("PatientName")
    if policy.require_identity_removed and _text(ds, "PatientIdentityRemoved") != "YES":
        found.add("PatientIdentityRemoved")
    return found


def _scan(ds: Dataset, policy: DeidPolicy, found: set[str], *, top_level: bool) -> None:
    """Add to ``found`` the forbidden, person-name, free-text and private attributes."""
    for elem in ds:
        finding = _element_finding(elem, policy, top_level=top_level)
        if finding is _SEQUENCE:
            for item in elem.value:
                _scan(item, policy, found, top_level=False)
        elif finding is not None:
            found.add(finding)


_SEQUENCE = "(sequence: scan its items)"


def _element_finding(elem: DataElement, policy: DeidPolicy, *, top_level: bool) -> str | None:
    """What one element breaks of the policy (its keyword, or its private group), None if
    nothing, or _SEQUENCE for a sequence whose items must be scanned in turn."""
    keyword = elem.keyword or str(elem.tag)
    if elem.tag.is_private and not policy.allow_private_tags:
        return f"({elem.tag.group:04X},xxxx)"
    if keyword in policy.allowed or elem.is_empty:
        return None
    if top_level and keyword in ("PatientID", "PatientName"):
        return None  # the pseudonym has its own rules above
    if keyword in policy.forbidden:
        return keyword
    if elem.VR == "SQ":
        return _SEQUENCE
    # The VR the standard gives the attribute counts as much as the one the file declares:
    # a file may not slip a name past the checks by declaring a date field LO.
    vrs = {elem.VR, _standard_vr(int(elem.tag))}
    if "PN" in vrs and not (top_level and keyword == "PatientName"):
        return keyword  # a person's name anywhere else identifies someone
    if keyword == "BurnedInAnnotation" and _text_of(elem.value).upper() != "NO":
        return keyword  # text burned into the pixels: names, dates, record numbers
    if any(vr in _VALUE_FORMS and not _values_of_form(vr, elem.value) for vr in vrs):
        return keyword
    if vrs & FREE_TEXT_VRS and any(
        pattern.search(text)
        for text in _strings_of(elem.value)
        for pattern in policy.identifier_patterns
    ):
        return keyword
    return None


@functools.lru_cache(maxsize=8192)
def _standard_vr(tag: int) -> str | None:
    """The VR the DICOM dictionary gives a public tag; None for private or unknown ones."""
    if tag >> 16 & 1:
        return None
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _values_of_form(vr: str, value: Any) -> bool:
    """Whether every value has the form of ``vr`` (see _VALUE_FORMS); empty ones have. A value
    pydicom converted (a number, a date) has; text it could not convert is checked as text."""
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    form = _VALUE_FORMS[vr]
    for v in values:
        if isinstance(v, bytes | bytearray):
            return False
        if isinstance(v, str) and (text := v.strip(" \0")) and not form.fullmatch(text):
            return False
    return True


def quiet_pydicom() -> None:
    """Keep pydicom's own warnings and log records, which quote the values they warn about,
    out of this process's logs and stderr: a refused value may be an identifier. Called
    where ingestion starts and in every header-reading process."""
    logger = logging.getLogger("pydicom")
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.handlers[:] = [logging.NullHandler()]
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=r"dataset_service\.dicom$")


@dataclass(frozen=True)
class InstanceHeader:
    """What ingestion keeps of a valid instance: identity, content hash, searchable metadata."""

    path: Path
    sha256: str  # hex digest of the whole file
    size_bytes: int
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str  # the pseudonym
    modality: str
    body_part: str
    manufacturer: str
    manufacturer_model: str
    study_date: dt.date | None
    study_description: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    rows: int
    columns: int
    number_of_frames: int
    slice_thickness: float | None
    pixel_spacing: tuple[float, ...] | None  # (row spacing, column spacing) in mm
    image_position: tuple[float, ...] | None  # ImagePositionPatient (x, y, z) in mm
    image_orientation: tuple[float, ...] | None  # row then column direction cosines
    patient_sex: str
    patient_age_years: int | None
    transfer_syntax_uid: str


def read_instance(path: Path, policy: DeidPolicy) -> InstanceHeader:
    """Validate one file and read its header without its pixel data; or raise InvalidInstance.

    Checks, first failure wins: Part 10 (preamble + "DICM"; a bare dataset has no reliable
    transfer syntax), parsable header, Pixel Data complete (read from the file layout, never
    decoded), required UIDs valid, an image, de-identified by ``policy``.
    """
    if not isinstance(path, Path):
        path = Path(path)
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        if header := _read_plain(fp, path, size, policy):
            return header
        fp.seek(0)
        ds = _parse(fp)
        try:
            _check_header(fp, ds, size, policy)
        except InvalidInstance as exc:
            exc.study_uid = _claimed_uid(ds, "StudyInstanceUID")
            exc.series_uid = _claimed_uid(ds, "SeriesInstanceUID")
            raise
        fp.seek(0)
        sha256 = hashlib.file_digest(fp, "sha256").hexdigest()
    return _header(path, sha256, size, ds, ds.file_meta)


def _header(path: Path, sha256: str, size: int, ds: Dataset | _Values,
            file_meta: Dataset | _Values) -> InstanceHeader:
    return InstanceHeader(
        path=path,
        sha256=sha256,
        size_bytes=size,
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        manufacturer=_text(ds, "Manufacturer"),
        manufacturer_model=_text(ds, "ManufacturerModelName"),
        study_date=_date(_text(ds, "StudyDate")),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int(ds.get("SeriesNumber")),
        instance_number=_int(ds.get("InstanceNumber")),
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        number_of_frames=_int(ds.get("NumberOfFrames")) or 1,
        slice_thickness=_float(ds.get("SliceThickness")),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        image_position=_floats(ds.get("ImagePositionPatient"), 3),
        image_orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        patient_sex=_text(ds, "PatientSex"),
        patient_age_years=_age_years(_text(ds, "PatientAge")),
        transfer_syntax_uid=_text(file_meta, "TransferSyntaxUID"),
    )


def _check_header(fp: BinaryIO, ds: Dataset, size: int, policy: DeidPolicy) -> None:
    """Every check after parsing, in order; the first failure raises InvalidInstance."""
    pixel_length = _pixel_data_length(fp, ds, size)
    # Hostile values fail on conversion; converting all now keeps later code simple.
    if (unreadable := _unreadable(ds.file_meta) or _unreadable(ds)) is not None:
        raise InvalidInstance("malformed", f"unreadable value of {unreadable}")
    _check_uids(ds, ds.file_meta)
    _check_image(ds, ds.file_meta, pixel_length)
    if offending := check_deidentified(ds, policy):
        raise InvalidInstance("identifying_data", ", ".join(offending))


def _unreadable(ds: Dataset) -> str | None:
    """The keyword (or tag) of the first element pydicom cannot convert, sequences searched;
    None if every one converts. Names the element, never its value."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            items = list(elem.value) if elem.VR == "SQ" else []
        except Exception:  # pydicom raises many types on bad values
            return _name_of(tag)
        for item in items:
            if (inner := _unreadable(item)) is not None:
                return inner
    return None


def _name_of(tag: int) -> str:
    """An element's keyword, or ``(gggg,eeee)`` for one without."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _claimed_uid(ds: Dataset, keyword: str) -> str | None:
    """The UID the file gives for ``keyword`` if it is a valid UID; None otherwise (a hostile
    value cannot name a study, and is never kept)."""
    try:
        value = str(ds.get(keyword, "") or "")
    except Exception:  # a hostile value: the file cannot name it
        return None
    return value if value and _valid_uid(value) else None


def _parse(fp: BinaryIO) -> Dataset:
    """The header up to Pixel Data, leaving ``fp`` at the Pixel Data element if any."""
    start = fp.read(132)
    if len(start) < 132 or start[128:] != b"DICM":
        raise InvalidInstance("not_dicom", "no DICOM Part 10 preamble and 'DICM' prefix")
    fp.seek(0)
    try:
        return dcmread(fp, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on hostile input
        # The exception's text may quote the value it choked on: only its kind is told.
        raise InvalidInstance("malformed", f"unparsable header ({type(exc).__name__})") from exc


def _pixel_data_length(fp: BinaryIO, ds: Dataset, size: int) -> int | None:
    """Check from the file layout that Pixel Data and what follows it lie inside the file;
    return its length: None when absent, 0xFFFFFFFF when encapsulated (fragments checked)."""
    if _text(ds.file_meta, "TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        raise InvalidInstance("unsupported", "deflated transfer syntax")
    at = fp.tell()
    implicit, little = ds.original_encoding
    endian = "<" if little in (True, None) else ">"
    element = _element_header(fp, bool(implicit), endian)
    if element is None:
        if 0x00280010 in ds or _header_cut_short(ds, size):  # Rows but no pixels: cut short
            raise InvalidInstance("truncated", f"file ends at byte {size} before Pixel Data")
        return None
    tag, length = element
    if tag not in _PIXEL_TAGS:
        raise InvalidInstance("malformed", f"header parsing stopped at byte {at} of {size}")
    if length == _UNDEFINED:
        _check_fragments(fp, endian, size)
    else:
        _skip(fp, length, size, "Pixel Data")
    while (trailing := _element_header(fp, bool(implicit), endian)) and trailing[1] != _UNDEFINED:
        _skip(fp, trailing[1], size, f"element {trailing[0]:08X} after Pixel Data")
    return length


def _element_header(fp: BinaryIO, implicit: bool, endian: str) -> tuple[int, int] | None:
    """(tag, value length) of the element at ``fp`` (PS3.5 7.1), None at the end of file."""
    head = fp.read(8)
    if not head:
        return None
    long_length = not implicit and head[4:6] in _LONG_LENGTH_VRS
    if long_length:
        head += fp.read(4)
    if len(head) < (12 if long_length else 8):
        raise InvalidInstance("truncated", "file ends inside an element header")
    group, element = struct.unpack(endian + "HH", head[:4])
    if implicit or long_length:
        (length,) = struct.unpack(endian + "L", head[-4:])
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
    return group << 16 | element, length


def _skip(fp: BinaryIO, length: int, size: int, what: str) -> None:
    if fp.tell() + length > size:
        raise InvalidInstance(
            "truncated", f"{what} needs {length} bytes from byte {fp.tell()}, the file has {size}"
        )
    fp.seek(length, os.SEEK_CUR)


def _header_cut_short(ds: Dataset, size: int) -> bool:
    """Whether the dataset is empty or its last element does not end where the file does."""
    elements = list(ds.elements())
    if not elements:
        return True
    last = elements[-1]
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED:
        return False  # where it ends is unknown without parsing it again
    return last.value_tell + last.length != size


def _check_fragments(fp: BinaryIO, endian: str, size: int) -> None:
    """Walk encapsulated Pixel Data items (PS3.5 A.4) to the delimiter, without reading them."""
    items = 0
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise InvalidInstance("truncated", "file ends inside encapsulated Pixel Data")
        group, element, length = struct.unpack(endian + "HHL", head)
        if group << 16 | element == _SEQUENCE_DELIMITER:
            break
        if group << 16 | element != _ITEM or length == _UNDEFINED:
            raise InvalidInstance("malformed", f"({group:04X},{element:04X}) in Pixel Data")
        _skip(fp, length, size, "a Pixel Data fragment")
        items += 1
    if items < 2:  # the Basic Offset Table item, then at least one fragment
        raise InvalidInstance("truncated", "encapsulated Pixel Data has no fragment")


def _check_uids(ds: Dataset | _Values, file_meta: Dataset | _Values) -> None:
    """Raise missing_uid unless the required UIDs and the transfer syntax are valid UIDs."""
    values = {k: ds.get(k) for k in REQUIRED_UIDS}
    values["TransferSyntaxUID"] = file_meta.get("TransferSyntaxUID")
    bad = []
    for keyword, value in values.items():
        if not value:
            bad.append(f"{keyword} missing")
        elif not isinstance(value, str) or not _valid_uid(value):
            bad.append(f"{keyword} invalid")
    if bad:
        raise InvalidInstance("missing_uid", ", ".join(bad))


def _check_image(ds: Dataset | _Values, file_meta: Dataset | _Values,
                 pixel_length: int | None) -> None:
    """Raise unless ``ds`` is an image whose native Pixel Data holds every pixel it declares."""
    sop_class = _uid(_text(ds, "SOPClassUID"))
    name = sop_class.name if sop_class.name != str(sop_class) else "unknown SOP class"
    if pixel_length is None and "Image" in name:
        raise InvalidInstance("truncated", f"no Pixel Data in a {name} instance")
    if pixel_length is None:
        raise InvalidInstance("unsupported", f"no Pixel Data: not an image ({name})")
    syntax = _uid(_text(file_meta, "TransferSyntaxUID"))
    if not syntax.is_transfer_syntax:
        raise InvalidInstance("unsupported", "unknown transfer syntax")
    module = {k: _int(ds.get(k)) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")}
    if missing := [k for k, v in module.items() if not v]:
        raise InvalidInstance("malformed", f"Image Pixel module lacks {', '.join(missing)}")
    if syntax.is_encapsulated or pixel_length == _UNDEFINED:
        return
    frames = max(_int(ds.get("NumberOfFrames")) or 1, 1)
    bits = frames * math.prod(v or 0 for v in module.values())  # rows x columns x samples x bits
    expected = (bits + 7) // 8
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        expected = expected // 3 * 2  # PS3.3 C.7.6.3.1.2: two chroma samples per two pixels
    if pixel_length < expected:
        raise InvalidInstance(
            "truncated", f"Pixel Data holds {pixel_length} bytes, the image needs {expected}"
        )


def _strings_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _text(ds: Dataset | _Values, keyword: str) -> str:
    if isinstance(ds, _Values):
        return ds.text(keyword)
    return _text_of(ds.get(keyword))


def _text_of(value: Any) -> str:
    return "\\".join(_strings_of(value)).strip()


# The same few UIDs and dates recur in every file of a folder: parse each once.
@functools.lru_cache(maxsize=4096)
def _uid(text: str) -> UID:
    return UID(text)


@functools.lru_cache(maxsize=4096)
def _valid_uid(text: str) -> bool:
    return UID(text).is_valid


def _int(value: Any) -> int | None:
    try:
        return None if isinstance(value, MultiValue | list) else int(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite numbers as floats, else None."""
    values = value if isinstance(value, MultiValue | list) else [value]
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return floats if len(floats) == n and all(map(math.isfinite, floats)) else None


def _float(value: Any) -> float | None:
    return floats[0] if (floats := _floats(value, 1)) else None


@functools.lru_cache(maxsize=4096)
def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _age_years(text: str) -> int | None:
    """Whole years from an Age String (PS3.5 AS) such as "063Y", "006M", "010W" or "003D"."""
    if not (match := re.fullmatch(r"(\d{3})([DWMY])", text)):
        return None
    n = int(match[1])
    return {"Y": n, "M": n // 12, "W": n * 7 // 365, "D": n // 365}[match[2]]


# -- plain files, read fast ----------------------------------------------------------------
# Most files of a folder are plain: Explicit VR Little Endian, the file meta, then top-level
# elements in ascending tag order with defined lengths (no sequence, no private or UN
# element), then native Pixel Data up to the very end of the file. For such a file dcmread
# finds exactly the elements a simple walk finds, so the walk replaces it, and each element
# (tag, VR, value bytes, character set) is converted by pydicom and checked against the
# policy once per process, then reused: the files of a series repeat most of their elements
# byte for byte. The fast path only accepts; a file it does not accept, whatever the reason,
# goes through the general path above, which makes every refusal.

# How much of a file the fast path reads at once: a plain header fits (or the general path
# reads the file); a larger file's Pixel Data is never read into memory, only hashed.
PLAIN_HEAD_BYTES = 64 * 1024
_PLAIN_VRS = {vr: vr.decode() for vr in (  # every VR but SQ and UN
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SS ST SV TM UC UI UL UR "
    b"US UT UV").split()}
_ELEMENT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<L")
_CHARSET = 0x00080005
_PLAIN_CACHE_LIMIT = 200_000  # checked elements kept per policy (most are UIDs seen once)


@dataclass(frozen=True, slots=True)
class _Checked:
    """One element converted by pydicom: the keyword `Dataset.get` finds it by (or ""), its
    value, its value as `_text` gives it, and what it breaks of the policy (or None)."""

    keyword: str
    value: Any
    text: str
    finding: str | None


class _Values:
    """A plain file's elements by keyword, answering `get` as a pydicom Dataset does."""

    __slots__ = ("_entries",)

    def __init__(self, entries: dict[str, _Checked]) -> None:
        self._entries = entries

    def get(self, keyword: str, default: Any = None) -> Any:
        entry = self._entries.get(keyword)
        return default if entry is None else entry.value

    def text(self, keyword: str) -> str:
        entry = self._entries.get(keyword)
        return "" if entry is None else entry.text


_checked_by_policy: dict[DeidPolicy, dict[tuple[Any, ...], _Checked | None]] = {}
_encodings: dict[tuple[str, bytes | None] | None, str | list[str] | None] = {}


def _read_plain(fp: BinaryIO, path: Path, size: int, policy: DeidPolicy
                ) -> InstanceHeader | None:
    """The header of a plain file (see above) that passes every check; else None. Reads
    at most PLAIN_HEAD_BYTES, and hashes the file as a stream where it is longer."""
    data = fp.read(PLAIN_HEAD_BYTES)
    if data[128:132] != b"DICM":
        return None
    walked = _walk_plain(data, 132, meta=True)
    if walked is None:
        return None
    meta, at = walked
    walked = _walk_plain(data, at, meta=False)
    if walked is None:
        return None
    elements, at = walked
    # Native Pixel Data (OB or OW: a 4-byte length) ending exactly where the file does.
    if data[at + 4:at + 6] not in (b"OB", b"OW") or at + 12 > len(data):
        return None
    (pixel_length,) = _LENGTH.unpack_from(data, at + 8)
    if pixel_length == _UNDEFINED or at + 12 + pixel_length != size:
        return None
    checked = _checked_by_policy.get(policy)
    if checked is None or len(checked) > _PLAIN_CACHE_LIMIT:
        if len(_checked_by_policy) > 8:
            _checked_by_policy.clear()
        checked = _checked_by_policy[policy] = {}
    meta_values = _plain_values(meta, ("meta", None), default_encoding, checked, policy)
    charset = next(((vr, value) for tag, vr, value in elements if tag == _CHARSET), None)
    if charset not in _encodings:
        _encodings[charset] = _plain_encoding(charset)
    encoding = _encodings[charset]
    if meta_values is None or encoding is None:
        return None
    if meta_values.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        return None
    found: set[str] = set()
    values = _plain_values(elements, charset, encoding, checked, policy, found)
    if values is None:
        return None
    try:
        _check_uids(values, meta_values)
        _check_image(values, meta_values, pixel_length)
    except InvalidInstance:
        return None
    if (found | _pseudonym_findings(values, policy)) - policy.allowed:
        return None
    if len(data) == size:
        sha256 = hashlib.sha256(data).hexdigest()
    else:
        fp.seek(0)
        sha256 = hashlib.file_digest(fp, "sha256").hexdigest()
    return _header(path, sha256, size, values, meta_values)


def _walk_plain(data: bytes, at: int, *, meta: bool) -> tuple[
        list[tuple[int, str, bytes | None]], int] | None:
    """(tag, VR, raw value) of the plain elements from `at`: the file meta (group 0002) if
    `meta`, else the top-level elements up to Pixel Data; and where the walk stopped.
    None where something is not plain."""
    size = len(data)
    found: list[tuple[int, str, bytes | None]] = []
    previous = -1
    while at + 8 <= size:
        group, element, vr_bytes, length = _ELEMENT.unpack_from(data, at)
        tag = group << 16 | element
        if meta and group != 2:
            return (found, at) if found else None
        if tag in _PIXEL_TAGS:
            return (found, at) if tag == 0x7FE00010 else None
        vr = _PLAIN_VRS.get(vr_bytes)
        if vr is None or tag <= previous or group & 1 or (not meta and group <= 2):
            return None
        start = at + 8
        if vr_bytes in _LONG_LENGTH_VRS:
            if start + 4 > size:
                return None
            (length,) = _LENGTH.unpack_from(data, start)
            start += 4
        end = start + length
        if length == _UNDEFINED or end > size:
            return None
        # The raw value dcmread keeps: the bytes, or for an empty one what pydicom uses.
        found.append((tag, vr, data[start:end] if length else empty_value_for_VR(vr, True)))
        at, previous = end, tag
    return None


def _plain_values(elements: list[tuple[int, str, bytes | None]], charset: Any,
                  encoding: str | list[str], checked: dict[tuple[Any, ...], _Checked | None],
                  policy: DeidPolicy, found: set[str] | None = None) -> _Values | None:
    """The elements' values by keyword, each converted and checked once per process; what
    they break is added to `found`. None if pydicom cannot convert one of them."""
    values: dict[str, _Checked] = {}
    for tag, vr, value in elements:
        key = (tag, vr, value, charset)
        entry = checked.get(key, _UNSEEN)
        if entry is _UNSEEN:
            entry = checked[key] = _check_plain(tag, vr, value, encoding, policy)
        if entry is None:
            return None
        if entry.keyword:
            values[entry.keyword] = entry
        if entry.finding is not None and found is not None:
            found.add(entry.finding)
    return _Values(values)


_UNSEEN = _Checked("", None, "", None)


def _check_plain(tag: int, vr: str, value: bytes | None, encoding: str | list[str],
                 policy: DeidPolicy) -> _Checked | None:
    """One element as the general path sees it: converted as Dataset.__getitem__ converts it
    (Specific Character Set itself in the default encoding), then checked as `_scan` checks
    a top-level element."""
    raw = RawDataElement(BaseTag(tag), vr, len(value or b""), value, 0, False, True)
    try:
        elem = convert_raw_data_element(
            raw, encoding=default_encoding if tag == _CHARSET else encoding)
        finding = _element_finding(elem, policy, top_level=True)
        text = _text_of(elem.value)
    except Exception:  # pydicom raises many types on bad values: the general path decides
        return None
    # By keyword only where the keyword names this very tag (not a repeating group's other
    # copies), as Dataset.get finds it.
    keyword = elem.keyword if tag_for_keyword(elem.keyword) == tag else ""
    return _Checked(keyword, elem.value, text, finding)


def _plain_encoding(charset: tuple[str, bytes | None] | None) -> str | list[str] | None:
    """The text encoding a dataset with this Specific Character Set (VR, raw value) is read
    with, as pydicom works it out; None if pydicom cannot."""
    raws = {}
    if charset is not None:
        vr, value = charset
        tag = BaseTag(_CHARSET)
        raws[tag] = RawDataElement(tag, vr, len(value or b""), value, 0, False, True)
    try:
        return Dataset(raws)._character_set
    except Exception:  # an unreadable character set: the general path decides
        return None


@dataclass(frozen=True)
class Problem:
    """A conflict that keeps a whole study out: ``code`` is one of PROBLEM_CODES."""

    code: str
    message: str


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' slices lie, from ImagePositionPatient along the orientation's normal."""

    slices: int  # instances with a position
    slice_spacing: float | None  # median distance between neighbouring slices, mm
    consistent: bool  # every instance has a position and one shared orientation
    evenly_spaced: bool  # consistent, and every gap within 1% (or 0.01 mm) of the median


@dataclass(frozen=True)
class SeriesGroup:
    """The instances of one series, ordered by InstanceNumber then SOPInstanceUID."""

    series_instance_uid: str
    series_number: int | None
    modality: str
    series_description: str
    body_part: str
    instances: tuple[InstanceHeader, ...]
    geometry: SeriesGeometry

    @property
    def instance_count(self) -> int:
        return len(self.instances)

    @property
    def frame_count(self) -> int:
        return sum(h.number_of_frames for h in self.instances)

    @property
    def size_bytes(self) -> int:
        return sum(h.size_bytes for h in self.instances)


@dataclass(frozen=True)
class StudyGroup:
    """One study of one subject: the unit that is ingested whole or not at all."""

    patient_id: str  # the subject's pseudonym (the smallest one when in conflict)
    study_instance_uid: str
    study_date: dt.date | None
    study_description: str
    series: tuple[SeriesGroup, ...]  # ordered by SeriesNumber then SeriesInstanceUID
    problems: tuple[Problem, ...]  # non-empty: quarantine the whole study

    @property
    def instances(self) -> tuple[InstanceHeader, ...]:
        return tuple(h for s in self.series for h in s.instances)

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)

    @property
    def size_bytes(self) -> int:
        return sum(s.size_bytes for s in self.series)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({s.modality for s in self.series if s.modality}))


def group_instances(headers: Iterable[InstanceHeader]) -> list[StudyGroup]:
    """Group valid instances into studies (by subject, date, UID) and their series.

    Conflicts become the study's ``problems`` rather than an exception, so one bad study
    does not stop the others: a StudyInstanceUID under two PatientIDs, a SeriesInstanceUID
    in two studies, one SOPInstanceUID with two contents. Identical copies count once.
    """
    by_sop: dict[str, dict[str, InstanceHeader]] = defaultdict(dict)
    for header in headers:
        by_sop[header.sop_instance_uid].setdefault(header.sha256, header)
    problems: dict[str, list[Problem]] = defaultdict(list)
    by_study: dict[str, list[InstanceHeader]] = defaultdict(list)
    for sop, contents in by_sop.items():
        for header in contents.values():
            by_study[header.study_instance_uid].append(header)
        if len(contents) > 1:
            message = f"SOPInstanceUID {sop} has {len(contents)} different contents"
            for study in sorted({h.study_instance_uid for h in contents.values()}):
                problems[study].append(Problem("duplicate_instance", message))
    studies_of_series: dict[str, set[str]] = defaultdict(set)
    for study, members in by_study.items():
        for header in members:
            studies_of_series[header.series_instance_uid].add(study)
    for series, studies in studies_of_series.items():
        if len(studies) > 1:
            message = f"SeriesInstanceUID {series} is in studies {', '.join(sorted(studies))}"
            for study in studies:
                problems[study].append(Problem("series_conflict", message))
    groups = [_study_group(uid, members, problems[uid]) for uid, members in by_study.items()]
    return sorted(
        groups, key=lambda g: (g.patient_id, g.study_date or dt.date.min, g.study_instance_uid)
    )


def _study_group(uid: str, members: list[InstanceHeader], problems: list[Problem]) -> StudyGroup:
    patients = sorted({h.patient_id for h in members})
    if len(patients) > 1:
        message = f"StudyInstanceUID {uid} is under PatientIDs {', '.join(patients)}"
        problems = [*problems, Problem("patient_conflict", message)]
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for header in members:
        by_series[header.series_instance_uid].append(header)
    series = sorted(
        (_series_group(series_uid, items) for series_uid, items in by_series.items()),
        key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid),
    )
    first = series[0].instances[0]
    return StudyGroup(
        patient_id=patients[0],
        study_instance_uid=uid,
        study_date=first.study_date,
        study_description=first.study_description,
        series=tuple(series),
        problems=tuple(problems),
    )


def _series_group(uid: str, members: list[InstanceHeader]) -> SeriesGroup:
    instances = tuple(
        sorted(members, key=lambda h: (h.instance_number or 0, h.sop_instance_uid, h.sha256))
    )
    first = instances[0]
    return SeriesGroup(
        series_instance_uid=uid,
        series_number=first.series_number,
        modality=first.modality,
        series_description=first.series_description,
        body_part=first.body_part,
        instances=instances,
        geometry=series_geometry(instances),
    )


def subject_conflicts(study: StudyGroup, sex: str | None,
                      earlier: Iterable[tuple[dt.date | None, int | None]]) -> list[str]:
    """The demographics (keywords) in which a study disagrees with its own files or with what
    is known of its subject: ``sex`` (M, F, O or None) and the (study date, age in years) of
    earlier studies. Ages must agree with the time between dates, to within a year; a
    pseudonym that comes back as someone else is a different person, not one to merge."""
    found = []
    sexes = {_sex_code(h.patient_sex) for h in study.instances} - {None}
    if len(sexes) > 1 or (sex is not None and sexes and sexes != {sex}):
        found.append("PatientSex")
    ages = {h.patient_age_years for h in study.instances} - {None}
    date = study.study_date
    if ages and (max(ages) - min(ages) > 1 or any(
            when is not None and date is not None and age is not None
            and abs(min(ages) - age - (date - when).days / 365.25) > 1
            for when, age in earlier)):
        found.append("PatientAge")
    return found


def study_demographics(study: StudyGroup) -> tuple[str | None, int | None]:
    """The subject's sex (M, F, O) and age in years as the study's files give them."""
    sexes = sorted({_sex_code(h.patient_sex) for h in study.instances} - {None})
    ages = sorted({h.patient_age_years for h in study.instances} - {None})
    return (sexes[0] if sexes else None), (ages[0] if ages else None)


def _sex_code(text: str) -> str | None:
    code = text.strip().upper()[:1]
    return code if code in ("M", "F", "O") else None


def series_geometry(instances: Iterable[InstanceHeader]) -> SeriesGeometry:
    """Slice count and spacing from positions projected on the normal of the orientation."""
    instances = list(instances)
    positions = [h.image_position for h in instances if h.image_position is not None]
    orientation = instances[0].image_orientation if instances else None
    normal = _slice_normal(orientation)
    consistent = (
        normal is not None
        and len(positions) == len(instances)
        and all(
            h.image_orientation is not None
            and math.dist(h.image_orientation, orientation or ()) < 1e-4
            for h in instances
        )
    )
    if normal is None or not consistent or len(positions) < 2:
        return SeriesGeometry(len(positions), None, consistent, False)
    depths = sorted(sum(p * n for p, n in zip(pos, normal, strict=True)) for pos in positions)
    gaps = [b - a for a, b in itertools.pairwise(depths)]
    spacing = statistics.median(gaps)
    tolerance = max(0.01, 0.01 * spacing)
    even = spacing > tolerance and all(abs(gap - spacing) <= tolerance for gap in gaps)
    return SeriesGeometry(len(positions), spacing, True, even)


def _slice_normal(orientation: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Row direction x column direction, as a unit vector; None when degenerate."""
    if orientation is None:
        return None
    (a1, a2, a3), (b1, b2, b3) = orientation[:3], orientation[3:]
    normal = (a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1)
    length = math.hypot(*normal)
    return tuple(c / length for c in normal) if length > 1e-6 else None


def study_hash(study: StudyGroup) -> str:
    """``sha256:<hex>`` of the lines ``"<SOPInstanceUID> <sha256>\\n"`` sorted by UID (then
    digest): independent of file order and names, changed by any change to any instance."""
    return instances_hash((h.sop_instance_uid, h.sha256) for h in study.instances)


def instances_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """The study hash from (SOPInstanceUID, sha256) pairs, for recomputing a stored study."""
    return _hash_lines(f"{uid} {digest}" for uid, digest in sorted(pairs))


def dataset_hash(study_hashes: Iterable[str]) -> str:
    """``sha256:<hex>`` of the distinct study hashes, sorted, one ``"sha256:<hex>\\n"`` a line."""
    hashes = sorted(set(study_hashes))
    if bad := [h for h in hashes if not re.fullmatch(r"sha256:[0-9a-f]{64}", h)]:
        raise ValueError(f"not study hashes: {', '.join(map(repr, bad))}")
    return _hash_lines(hashes)


def _hash_lines(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(f"{line}\n".encode("ascii"))
    return f"sha256:{digest.hexdigest()}"
