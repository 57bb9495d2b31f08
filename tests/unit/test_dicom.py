"""Tests for the DICOM core of ingestion (dataset_service.dicom), on generated demo data."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
import time
import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import DATA_ROOT
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, RLELossless

from dataset_service.demo import DemoSpec, generate_demo_data, write_faulty_examples
from dataset_service.dicom import (
    BASIC_PROFILE_FORBIDDEN,
    REASON_CODES,
    DeidPolicy,
    InstanceHeader,
    InvalidInstance,
    StudyGroup,
    _age_years,
    check_deidentified,
    dataset_hash,
    group_instances,
    read_instance,
    series_geometry,
    study_hash,
    subject_conflicts,
)
from vre.config import ConfigError

POLICY = DeidPolicy()
ONE_SERIES = DemoSpec(
    subjects=1, studies_per_subject=(1, 1), series_per_study=(1, 1), slices_per_series=(3, 3)
)
# pydicom's bundled files, found directly: get_testdata_files() also tries to download the
# files it does not bundle, which takes seconds offline.
BUNDLED = sorted((Path(DATA_ROOT) / "test_files").rglob("*.dcm"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The default demo cohort and the header of each of its files."""
    summary = generate_demo_data(tmp_path_factory.mktemp("demo"))
    return summary, {path: read_instance(path, POLICY) for path in summary.files}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_faulty_examples(tmp_path_factory.mktemp("faulty"))


@pytest.fixture
def one_file(tmp_path: Path) -> Path:
    """A valid single-series demo; its first file."""
    return generate_demo_data(tmp_path / "demo", ONE_SERIES).files[0]


def _reason(path: Path, policy: DeidPolicy = POLICY) -> InvalidInstance:
    with pytest.raises(InvalidInstance) as caught:
        read_instance(path, policy)
    return caught.value


def _deidentified_dataset(**values: object) -> Dataset:
    """An in-memory dataset that passes the default policy, with ``values`` set on it."""
    ds = Dataset()
    ds.PatientID = ds.PatientName = "SUBJ-0001"
    ds.PatientIdentityRemoved = "YES"
    ds.StudyDescription = "CT CHEST"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


# Reading instances


def test_every_demo_instance_reads_back_with_its_metadata(demo) -> None:
    summary, headers = demo
    assert len(headers) == summary.instances
    for path, header in headers.items():
        ds = dcmread(path)
        assert header.path == path
        assert header.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert header.size_bytes == path.stat().st_size
        assert header.sop_class_uid == ds.SOPClassUID
        assert header.sop_instance_uid == ds.SOPInstanceUID
        assert header.study_instance_uid == ds.StudyInstanceUID
        assert header.series_instance_uid == ds.SeriesInstanceUID
        assert header.patient_id == ds.PatientID == path.relative_to(summary.out_dir).parts[1]
        assert (header.modality, header.body_part) == (ds.Modality, ds.BodyPartExamined)
        assert header.manufacturer == ds.Manufacturer
        assert header.manufacturer_model == ds.ManufacturerModelName
        assert header.study_date == dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        assert header.study_description == ds.StudyDescription
        assert header.series_description == ds.SeriesDescription
        assert header.series_number == ds.SeriesNumber
        assert header.instance_number == ds.InstanceNumber
        assert (header.rows, header.columns, header.number_of_frames) == (64, 64, 1)
        assert header.slice_thickness == ds.SliceThickness
        assert header.pixel_spacing == tuple(ds.PixelSpacing)
        assert header.image_position == tuple(ds.ImagePositionPatient)
        assert header.image_orientation == tuple(ds.ImageOrientationPatient)
        assert header.patient_sex == ds.PatientSex in ("F", "M")
        assert header.patient_age_years == int(ds.PatientAge[:3])
        assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_pixel_data_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(ONE_SERIES, rows=1024, cols=1024)
    path = generate_demo_data(tmp_path, spec).files[0]
    size = path.stat().st_size
    assert size > 2 * 1024 * 1024

    def no_pixels(self: Dataset) -> None:
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_pixels))
    tracemalloc.start()
    started = time.perf_counter()
    header = read_instance(path, POLICY)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size / 4, f"{peak} bytes allocated to read a {size}-byte file"
    assert elapsed < 0.5
    assert (header.rows, header.columns) == (1024, 1024)
    assert {f.name for f in dataclasses.fields(InstanceHeader) if "pixel" in f.name} == {
        "pixel_spacing"
    }


@pytest.mark.parametrize(
    ("name", "reason_code"),
    [
        ("truncated", "truncated"),
        ("not_dicom", "not_dicom"),
        ("identifying", "identifying_data"),
        ("missing_uids", "missing_uid"),
    ],
)
def test_each_faulty_example_gets_its_reason_code(faulty, name: str, reason_code: str) -> None:
    assert _reason(faulty[name]).reason_code == reason_code


def test_refusals_name_what_is_wrong(faulty) -> None:
    identifying = _reason(faulty["identifying"]).message
    for keyword in ("PatientBirthDate", "InstitutionName", "PatientName"):
        assert keyword in identifying
    missing = _reason(faulty["missing_uids"]).message
    assert "StudyInstanceUID" in missing and "SeriesInstanceUID" in missing


def test_allowing_institution_name_leaves_the_other_findings(faulty) -> None:
    policy = DeidPolicy.from_mapping({"allowed": ["InstitutionName"]})
    refusal = _reason(faulty["identifying"], policy)
    assert refusal.reason_code == "identifying_data"
    assert "InstitutionName" not in refusal.message
    assert "PatientBirthDate" in refusal.message and "PatientName" in refusal.message


@pytest.mark.parametrize("cut", [200, 700, 1100, 1400, -1])
def test_a_file_cut_anywhere_after_its_file_meta_is_truncated(one_file: Path, cut: int) -> None:
    data = one_file.read_bytes()
    one_file.write_bytes(data[:cut])
    assert _reason(one_file).reason_code == "truncated"


def test_encapsulated_pixel_data_is_checked_fragment_by_fragment(one_file: Path) -> None:
    ds = dcmread(one_file)
    ds.compress(RLELossless)
    ds.save_as(one_file, enforce_file_format=True)
    assert read_instance(one_file, POLICY).transfer_syntax_uid == RLELossless
    one_file.write_bytes(one_file.read_bytes()[:-100])
    assert _reason(one_file).reason_code == "truncated"


def test_pixel_data_shorter_than_the_image_is_truncated(one_file: Path) -> None:
    ds = dcmread(one_file)
    ds.Rows = 128  # the 64 x 64 pixels stored no longer fill the declared image
    ds.save_as(one_file, enforce_file_format=True)
    assert "image needs" in _reason(one_file).message


def test_garbage_after_the_file_meta_is_malformed(one_file: Path) -> None:
    one_file.write_bytes(one_file.read_bytes()[:132] + b"\xff" * 500)
    assert _reason(one_file).reason_code == "malformed"


def test_an_instance_without_pixel_data_is_unsupported(one_file: Path) -> None:
    ds = dcmread(one_file)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.save_as(one_file, enforce_file_format=True)
    assert _reason(one_file).reason_code == "unsupported"


def test_an_invalid_uid_is_refused(one_file: Path) -> None:
    ds = dcmread(one_file)
    ds.StudyInstanceUID = "1.2.03.4"  # a component may not start with 0
    ds.save_as(one_file, enforce_file_format=True)
    refusal = _reason(one_file)
    assert refusal.reason_code == "missing_uid"
    assert "StudyInstanceUID invalid" in refusal.message


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_pydicom_test_files_are_read_or_refused_with_a_reason(path: Path) -> None:
    try:
        header = read_instance(path, POLICY)
    except InvalidInstance as refusal:
        assert refusal.reason_code in REASON_CODES
    else:
        assert header.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("age", "years"),
    [("063Y", 63), ("006M", 0), ("030M", 2), ("010W", 0), ("400D", 1), ("63Y", None), ("", None)],
)
def test_patient_age_is_read_in_whole_years(age: str, years: int | None) -> None:
    assert _age_years(age) == years


# De-identification policy


def test_a_deidentified_dataset_passes() -> None:
    assert check_deidentified(_deidentified_dataset(), POLICY) == []


@pytest.mark.parametrize("pseudonym", ["Jane Doe", "", "-SUBJ", "x" * 65, "SUBJ/0001"])
def test_patient_id_must_look_like_a_pseudonym(pseudonym: str) -> None:
    ds = _deidentified_dataset(PatientID=pseudonym, PatientName="")
    assert check_deidentified(ds, POLICY) == ["PatientID"]


def test_the_pseudonym_pattern_is_configurable() -> None:
    policy = DeidPolicy.from_mapping({"pseudonym_pattern": r"SUBJ-\d{4}"})
    assert check_deidentified(_deidentified_dataset(), policy) == []
    other = _deidentified_dataset(PatientID="OTHER-1", PatientName="")
    assert check_deidentified(other, policy) == ["PatientID"]


def test_patient_name_must_be_empty_or_the_pseudonym() -> None:
    assert check_deidentified(_deidentified_dataset(PatientName=""), POLICY) == []
    assert check_deidentified(_deidentified_dataset(PatientName="Doe^Jane"), POLICY) == [
        "PatientName"
    ]


def test_identity_removed_flag_is_required_unless_configured_off() -> None:
    ds = _deidentified_dataset()
    del ds.PatientIdentityRemoved
    assert check_deidentified(ds, POLICY) == ["PatientIdentityRemoved"]
    policy = DeidPolicy.from_mapping({"require_identity_removed": False})
    assert check_deidentified(ds, policy) == []


def test_forbidden_attributes_may_be_present_when_empty() -> None:
    ds = _deidentified_dataset(AccessionNumber="", ReferringPhysicianName="")
    assert check_deidentified(ds, POLICY) == []
    ds.AccessionNumber = "A123"
    assert check_deidentified(ds, POLICY) == ["AccessionNumber"]


@pytest.mark.parametrize(
    "text",
    [
        "call +33 6 12 34 56 78",
        "phone (555) 123-4567",
        "contact jane.doe@example.org",
        "DOB 15/03/1972",
        "seen 1972-03-15",
    ],
)
def test_identifiers_in_free_text_are_flagged(text: str) -> None:
    assert check_deidentified(_deidentified_dataset(ImageComments=text), POLICY) == [
        "ImageComments"
    ]


@pytest.mark.parametrize("text", ["AX LUNG 5mm", "Helix CT 64", "kV 120, 2.5 mm, v1.2.3.4"])
def test_ordinary_free_text_passes(text: str) -> None:
    assert check_deidentified(_deidentified_dataset(ImageComments=text), POLICY) == []


def test_person_names_and_identifiers_inside_sequences_are_found() -> None:
    item = Dataset()
    item.PersonName = "Smith^John"
    item.TextValue = "mail me: j.smith@example.org"
    ds = _deidentified_dataset(ContentSequence=Sequence([item]))
    assert check_deidentified(ds, POLICY) == ["PersonName", "TextValue"]


def test_private_tags_are_refused_unless_allowed() -> None:
    ds = _deidentified_dataset()
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "internal")
    assert check_deidentified(ds, POLICY) == ["(0009,xxxx)"]
    assert check_deidentified(ds, DeidPolicy.from_mapping({"allow_private_tags": True})) == []


def test_default_forbidden_attributes_are_dicom_keywords() -> None:
    assert all(tag_for_keyword(k) is not None for k in BASIC_PROFILE_FORBIDDEN)


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"allowed": ["InstitutionNam"]}, "allowed"),
        ({"forbidden": "PatientBirthDate"}, "forbidden"),
        ({"pseudonym_pattern": "("}, "pseudonym_pattern"),
        ({"identifier_patterns": ["[a-"]}, "identifier_patterns"),
        ({"allow_private_tags": "yes"}, "allow_private_tags"),
        ({"allow_privates": True}, "allow_privates"),
    ],
)
def test_policy_configuration_errors_name_the_key(mapping: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DeidPolicy.from_mapping(mapping)
    assert caught.value.key == key


# Grouping and hashing


def _header(**changes: object) -> InstanceHeader:
    """A synthetic header of an axial slice; ``changes`` override fields."""
    values: dict = {f.name: None for f in dataclasses.fields(InstanceHeader)}
    values.update(
        path=Path("x.dcm"), sha256="0" * 64, size_bytes=10, sop_instance_uid="1.1",
        study_instance_uid="1.2", series_instance_uid="1.3", patient_id="SUBJ-0001",
        modality="CT", image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), number_of_frames=1,
    )  # fmt: skip
    values.update(changes)
    return InstanceHeader(**values)


def test_grouping_counts_match_the_demo(demo) -> None:
    summary, headers = demo
    studies = group_instances(headers.values())
    assert all(study.problems == () for study in studies)
    assert [s.study_instance_uid for s in studies] == list(summary.study_uids)
    assert {s.patient_id for s in studies} == set(summary.subject_ids)
    assert {se.series_instance_uid for s in studies for se in s.series} == set(summary.series_uids)
    assert sum(s.instance_count for s in studies) == summary.instances
    assert sum(s.size_bytes for s in studies) == sum(p.stat().st_size for p in summary.files)


def test_slice_spacing_is_the_generated_spacing(demo) -> None:
    _, headers = demo
    for study in group_instances(headers.values()):
        for series in study.series:
            geometry = series.geometry
            assert geometry.slices == series.instance_count
            assert geometry.consistent and geometry.evenly_spaced
            thickness = series.instances[0].slice_thickness  # the demo spaces by thickness
            assert geometry.slice_spacing == pytest.approx(thickness, abs=1e-3)


def test_geometry_finds_uneven_and_inconsistent_series() -> None:
    positions = [0.0, 2.5, 5.0, 7.5]
    headers = [_header(image_position=(0.0, 0.0, z), sop_instance_uid=f"1.{z}") for z in positions]
    random.Random(1).shuffle(headers)
    assert series_geometry(headers).slice_spacing == pytest.approx(2.5)
    assert series_geometry(headers).evenly_spaced
    gap = [*headers, _header(image_position=(0.0, 0.0, 20.0))]
    assert not series_geometry(gap).evenly_spaced
    tilted = [*headers, _header(image_position=(0.0, 0.0, 10.0), image_orientation=(0.0,) * 6)]
    assert not series_geometry(tilted).consistent


def test_a_study_under_two_patients_is_a_conflict() -> None:
    studies = group_instances(
        [_header(), _header(sop_instance_uid="1.1.2", patient_id="SUBJ-0002", sha256="1" * 64)]
    )
    assert [p.code for p in studies[0].problems] == ["patient_conflict"]


def test_one_instance_with_two_contents_is_a_conflict_but_a_copy_is_not() -> None:
    copy = group_instances([_header(), _header(path=Path("copy.dcm"))])
    assert (copy[0].instance_count, copy[0].problems) == (1, ())
    changed = group_instances([_header(), _header(sha256="1" * 64)])
    assert [p.code for p in changed[0].problems] == ["duplicate_instance"]


def test_a_series_in_two_studies_is_a_conflict() -> None:
    other_study = _header(sop_instance_uid="1.9", study_instance_uid="1.8")
    studies = group_instances([_header(), other_study])
    assert [[p.code for p in s.problems] for s in studies] == [["series_conflict"]] * 2


def test_study_hash_ignores_order_and_follows_content(demo) -> None:
    _, headers = demo
    forward = group_instances(headers.values())
    backward = group_instances(reversed(list(headers.values())))
    assert [study_hash(s) for s in forward] == [study_hash(s) for s in backward]
    study = forward[0]
    first, *rest = study.instances
    changed = group_instances([dataclasses.replace(first, sha256="f" * 64), *rest])[0]
    assert study_hash(changed) != study_hash(study)
    assert study_hash(study).startswith("sha256:") and len(study_hash(study)) == 71


def test_study_hash_is_the_documented_formula() -> None:
    study: StudyGroup = group_instances([_header(sop_instance_uid="1.10"), _header()])[0]
    lines = f"1.1 {'0' * 64}\n1.10 {'0' * 64}\n".encode()
    assert study_hash(study) == "sha256:" + hashlib.sha256(lines).hexdigest()


def test_dataset_hash_is_over_sorted_study_hashes(demo) -> None:
    _, headers = demo
    hashes = [study_hash(s) for s in group_instances(headers.values())]
    assert dataset_hash(hashes) == dataset_hash(reversed(hashes))
    assert dataset_hash(hashes) != dataset_hash(hashes[1:])
    with pytest.raises(ValueError, match="not study hashes"):
        dataset_hash(["md5:abc"])


# Values against their value representation, burned-in text, and refusals that quote nothing


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "Doe^John"),
        ("StudyDate", "MRN0048291"),
        ("ContentDate", "2022-03-01"),
        ("PatientAge", "Smith"),
        ("PatientAge", "63"),
        ("StudyTime", "Jane"),
        ("AcquisitionDateTime", "MRN 4829"),
    ],
)
def test_a_name_or_record_number_in_a_date_time_or_age_field_is_identifying(
    keyword: str, value: str
) -> None:
    assert check_deidentified(_deidentified_dataset(**{keyword: value}), POLICY) == [keyword]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "20220301"),
        ("PatientAge", "063Y"),
        ("PatientAge", "010W"),
        ("StudyTime", "090000.123456"),
        ("StudyTime", "0900"),
        ("StudyTime", "09:00:00"),
        ("AcquisitionDateTime", "20220301090000.5+0100"),
    ],
)
def test_well_formed_dates_times_and_ages_pass(keyword: str, value: str) -> None:
    assert check_deidentified(_deidentified_dataset(**{keyword: value}), POLICY) == []


def test_a_date_field_declared_with_another_vr_is_still_checked_as_a_date() -> None:
    ds = _deidentified_dataset()
    ds.add_new(tag_for_keyword("StudyDate"), "LO", "Doe^John")
    assert check_deidentified(ds, POLICY) == ["StudyDate"]


def test_burned_in_annotation_is_identifying_unless_no() -> None:
    assert check_deidentified(_deidentified_dataset(BurnedInAnnotation="NO"), POLICY) == []
    for value in ("YES", "yes", "MAYBE"):
        ds = _deidentified_dataset(BurnedInAnnotation=value)
        assert check_deidentified(ds, POLICY) == ["BurnedInAnnotation"]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("StudyDate", "MRN0048291"), ("PatientAge", "Smith"), ("BurnedInAnnotation", "YES")],
)
def test_a_file_with_a_bad_temporal_value_or_burned_in_text_is_refused(
    one_file: Path, keyword: str, value: str
) -> None:
    ds = dcmread(one_file)
    setattr(ds, keyword, value)
    ds.save_as(one_file, enforce_file_format=True)
    refusal = _reason(one_file)
    assert refusal.reason_code == "identifying_data"
    assert refusal.message == keyword
    assert refusal.study_uid == ds.StudyInstanceUID


HOSTILE = "Doe^Johnathan MRN0048291"


@pytest.mark.parametrize(
    "keyword",
    ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyDate"],
)
def test_a_refusal_never_quotes_the_refused_value(
    one_file: Path, keyword: str, recwarn: pytest.WarningsRecorder
) -> None:
    ds = dcmread(one_file)
    setattr(ds, keyword, HOSTILE)
    ds.save_as(one_file, enforce_file_format=True)
    refusal = _reason(one_file)
    assert keyword in refusal.message
    for part in HOSTILE.split():
        assert part not in str(refusal) and part not in refusal.message
    assert refusal.study_uid in (None, ds.StudyInstanceUID)
    assert HOSTILE not in (refusal.study_uid or "") + (refusal.series_uid or "")


def test_an_unreadable_value_is_named_not_quoted(one_file: Path) -> None:
    ds = dcmread(one_file)
    ds.add_new(tag_for_keyword("SliceThickness"), "LO", "Doe^Johnathan")
    ds.save_as(one_file, enforce_file_format=True)
    # pydicom writes no such number, so the element's VR is turned into DS in the bytes.
    data = one_file.read_bytes()
    one_file.write_bytes(data.replace(b"\x18\x00\x50\x00LO", b"\x18\x00\x50\x00DS", 1))
    refusal = _reason(one_file)
    assert "Johnathan" not in str(refusal)
    assert refusal.reason_code in ("malformed", "identifying_data")


def _study_of(sex: str, age: int | None, date: dt.date | None, *more_sexes: str) -> StudyGroup:
    headers = [_header(patient_sex=sex, patient_age_years=age, study_date=date)]
    headers += [_header(sop_instance_uid=f"1.1.{n}", sha256=f"{n}" * 64, patient_sex=other,
                        patient_age_years=age, study_date=date)
                for n, other in enumerate(more_sexes, 1)]
    return group_instances(headers)[0]


MARCH_2022 = dt.date(2022, 3, 1)


@pytest.mark.parametrize(
    ("study", "sex", "earlier", "found"),
    [
        (_study_of("F", 60, MARCH_2022), "F", [(dt.date(2020, 3, 1), 58)], []),
        (_study_of("F", 60, MARCH_2022), None, [(dt.date(2022, 1, 1), 59)], []),
        (_study_of("F", 60, MARCH_2022), "M", [], ["PatientSex"]),
        (_study_of("F", 60, MARCH_2022, "M"), None, [], ["PatientSex"]),
        (_study_of("F", 60, MARCH_2022), "F", [(dt.date(2022, 1, 1), 40)], ["PatientAge"]),
        (_study_of("F", 60, MARCH_2022), "F", [(dt.date(2012, 3, 1), 60)], ["PatientAge"]),
        (_study_of("F", 60, None), "F", [(dt.date(2012, 3, 1), 30)], []),
        (_study_of("", None, MARCH_2022), "M", [(MARCH_2022, 30)], []),
    ],
)
def test_a_study_that_disagrees_with_its_subject_is_a_subject_conflict(
    study: StudyGroup, sex: str | None, earlier: list, found: list[str]
) -> None:
    assert subject_conflicts(study, sex, earlier) == found
