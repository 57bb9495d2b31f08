"""The deciding parts of batch_tools without a dataset tree: an index document into records
(and the ones refused), Spark's settings, clinical columns typed, volumes fitted."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from batch_tools.data import DataError, MountedDataset, SeriesCache, parse_index
from batch_tools.spark import clinical_table, session_settings

SERIES = {"series_uid": "1.2.3.1", "modality": "CT", "body_part": "CHEST",
          "description": "AX LUNG", "manufacturer": "Acme", "rows": 32, "columns": 32,
          "slice_thickness": 5.0, "slice_spacing": None, "instances": 4,
          "folder": "SUBJ-1/1.2.3/1.2.3.1"}
INDEX = {"dataset": {"id": "d-1", "name": "Pilot", "version": "1.0",
                     "content_hash": "sha256:" + "ab" * 32},
         "subjects": [
             {"subject": "SUBJ-1", "age": 61, "sex": "F", "diagnosis": "pneumonia",
              "clinical": {"bmi": 22.5, "smoking_status": "never", "visits": 3},
              "studies": [{"study_uid": "1.2.3", "date": "2021-02-03", "description": "CT",
                           "series": [SERIES]}]},
             {"subject": "SUBJ-2", "age": None, "sex": "M", "diagnosis": "glioma",
              "clinical": {"bmi": 30, "visits": 1}, "studies": []}]}


def test_an_index_document_becomes_typed_records() -> None:
    info, subjects = parse_index(INDEX)
    assert info.id == "d-1" and info.content_hash.startswith("sha256:")
    (series,) = subjects[0].studies[0].series
    assert series.subject == "SUBJ-1" and series.study_uid == "1.2.3"
    assert series.rows == 32 and series.slice_thickness == 5.0 and series.instances == 4
    assert subjects[0].value("diagnosis") == "pneumonia"
    assert subjects[0].value("bmi") == 22.5 and subjects[1].value("smoking_status") is None
    dataset = MountedDataset(Path("unused"), info, subjects)
    assert dataset.series(modality="MR") == [] and dataset.find_series("1.2.3.1") == series
    with pytest.raises(DataError) as missing:
        dataset.find_series("9.9")
    assert missing.value.code == "series_not_found"


def _with(path: tuple, value: object) -> dict:
    document = copy.deepcopy(INDEX)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


SERIES_PATH = ("subjects", 0, "studies", 0, "series", 0)


@pytest.mark.parametrize("document", [
    [], {"subjects": "none"}, _with(("dataset",), ["not", "an", "object"]),
    _with(("subjects", 0), "SUBJ-1"), _with(("subjects", 0, "subject"), None),
    _with(("subjects", 0, "age"), "sixty"), _with(("subjects", 0, "age"), True),
    _with(("subjects", 0, "clinical"), [1, 2]),
    _with((*SERIES_PATH, "folder"), "../../etc"), _with((*SERIES_PATH, "folder"), "/etc"),
    _with((*SERIES_PATH, "instances"), None), _with((*SERIES_PATH, "rows"), "32"),
], ids=lambda d: str(d)[:40])
def test_a_malformed_index_is_refused_with_one_code(document) -> None:
    with pytest.raises(DataError) as caught:
        parse_index(document)
    assert caught.value.code == "index_invalid" and caught.value.path == "index.json"


def test_spark_is_configured_for_loopback_local_mode_in_one_place() -> None:
    settings = session_settings()
    assert settings["spark.master"] == "local[2]"
    assert settings["spark.ui.enabled"] == "false"
    assert settings["spark.driver.bindAddress"] == settings["spark.driver.host"] == "127.0.0.1"
    assert session_settings("local[4]", {"spark.sql.shuffle.partitions": "8"})[
        "spark.sql.shuffle.partitions"] == "8"
    with pytest.raises(ValueError):
        session_settings("spark://cluster:7077")


def test_clinical_columns_are_typed_from_their_values() -> None:
    _, subjects = parse_index(INDEX)
    columns, rows = clinical_table(MountedDataset(Path("unused"), parse_index(INDEX)[0],
                                                  subjects))
    assert columns == [("subject", "string"), ("age", "int"), ("sex", "string"),
                       ("diagnosis", "string"), ("bmi", "double"),
                       ("smoking_status", "string"), ("visits", "bigint")]
    assert rows == [("SUBJ-1", 61, "F", "pneumonia", 22.5, "never", 3),
                    ("SUBJ-2", None, "M", "glioma", 30.0, None, 1)]


def test_a_volume_is_fitted_to_the_shape_deterministically() -> None:
    from batch_tools.torch_data import fit_volume

    volume = np.random.default_rng(1).normal(100, 20, (7, 30, 40)).astype(np.float32)
    fitted = fit_volume(volume, (8, 16, 16))
    assert tuple(fitted.shape) == (1, 8, 16, 16)
    assert abs(float(fitted.mean())) < 1e-4 and abs(float(fitted.std()) - 1) < 1e-3
    assert np.array_equal(fitted.numpy(), fit_volume(volume, (8, 16, 16)).numpy())
    flat = fit_volume(np.full((2, 4, 4), 5.0), (2, 4, 4))
    assert np.all(np.isfinite(flat.numpy())) and float(flat.abs().max()) == 0


def test_a_damaged_cache_entry_is_decoded_again(tmp_path: Path) -> None:
    info, subjects = parse_index(INDEX)
    dataset = MountedDataset(tmp_path / "dataset", info, subjects)
    cache = SeriesCache(tmp_path / "cache")
    cache.put(dataset, "1.2.3.1", np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    assert cache.get(dataset, "1.2.3.1").shape == (1, 2, 3)
    (entry,) = cache.entries(dataset)
    assert entry.parent.name == "sha256-" + "ab" * 32
    entry.write_bytes(b"half a file")
    assert cache.get(dataset, "1.2.3.1") is None
