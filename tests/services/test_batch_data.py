"""The code researchers run in jobs reads a dataset tree exactly as the dataset service builds
it: demo studies are ingested and released by the real service (on SQLite, with the tracer
served over HTTP), and batch_tools.data, its PyTorch Dataset, its Spark helpers and the two
example jobs read that tree."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from batch_tools.data import DataError, MountedDataset, SeriesCache, open_dataset
from dataset_service.demo import DemoSpec, generate_demo_data
from dataset_service.models import Project, ProjectMember
from launcher.serve import app_factory
from tests.conftest import ISSUER
from tests.helpers import auth, serving
from tracer.client import TracerClient
from vre.config import load_config
from vre.service_auth import StaticToken
from vre.services import service

# Two modalities and several diagnoses, few and small slices: quick to ingest and to train.
SPEC = DemoSpec(seed=11, subjects=6, series_per_study=(1, 2), slices_per_series=(4, 6),
                rows=32, cols=32)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _app(config, name: str):
    app = app_factory(service(name))(config)
    app.extensions["vre.db"].migrate(config, name)
    app.testing = True
    return app


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, issuer_dir: Path, issuer) -> Iterator[Path]:
    """A released dataset's tree, built once for the module by the dataset service."""
    base = tmp_path_factory.mktemp("platform")
    jwks = issuer_dir / "jwks.json"
    config = load_config(env={}, home=base / "home", token_issuer=ISSUER,
                         jwks_url=jwks.as_uri(), secret_key="s" * 48, service_secret="t" * 48,
                         demo_data=False, signing_key_file=issuer_dir / "signing.pem",
                         tracer_key_file=issuer_dir / "tracer.pem", log_level="WARNING",
                         revocation_feeds="")
    tracer_app, datasets = _app(config, "tracer"), _app(config, "dataset_service")

    def token(subject: str, *roles: str) -> str:
        return issuer.issue(subject, list(roles))[0]

    with serving(tracer_app) as tracer_url:
        datasets.extensions["dataset.tracer"] = TracerClient(
            tracer_url, StaticToken(token("service:dataset_service", "service")))
        with datasets.extensions["vre.db"].session() as session:
            project = Project(name="cohort", title="Cohort", created_by="steward-1")
            session.add(project)
            session.flush()
            session.add(ProjectMember(project_id=project.id, user_id="steward-1",
                                      role="steward"))
            project_id = project.id
        generate_demo_data(base / "in", SPEC)
        ingestor = datasets.extensions["dataset.ingestor"]
        ingestor.run(ingestor.start(project_id, base / "in", "steward-1"))
        steward = auth(token("steward-1", "steward"))
        client = datasets.test_client()
        created = client.post("/api/v1/datasets", headers=steward, json={
            "project": "cohort", "name": "Demo cohort", "description": "All demo studies",
            "query": {}, "license_id": "CC-BY-4.0", "contact_name": "Data Steward",
            "contact_email": "steward@hospital.example"})
        assert created.status_code == 201, created.get_json()
        dataset_id = created.get_json()["id"]
        released = client.post(f"/api/v1/datasets/{dataset_id}/release", headers=steward)
        assert released.status_code == 200, released.get_json()
        for app in (tracer_app, datasets):
            if "vre.outbox" in app.extensions:
                app.extensions["vre.outbox"].stop()
            app.extensions["vre.db"].engine.dispose()
    path = config.repository_path / "datasets" / dataset_id
    assert (path / "index.json").is_file()
    yield path


@pytest.fixture
def writable_copy(tree: Path, tmp_path: Path) -> Path:
    """A copy of the tree that a test may damage."""
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    for folder, _dirs, files in os.walk(copy):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    return copy


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


# ---- reading the index and a series -----------------------------------------------------

def test_the_index_reads_into_typed_records(tree: Path) -> None:
    dataset = open_dataset(tree)
    document = json.loads((tree / "index.json").read_text())
    assert dataset.info.id == document["dataset"]["id"] == tree.name
    assert dataset.info.content_hash == document["dataset"]["content_hash"]
    assert [s.subject for s in dataset.subjects] == [s["subject"] for s in
                                                     document["subjects"]]
    series = dataset.series()
    assert len(series) == sum(len(st["series"]) for s in document["subjects"]
                              for st in s["studies"])
    assert {se.modality for se in series} == {"CT", "MR"}
    assert sum(se.instances for se in series) == len(list(tree.rglob("*.dcm")))
    for record in series:
        assert (tree / record.folder).is_dir() and record.rows == record.columns == 32
        assert dataset.subject(record.subject).diagnosis is not None
    assert all(se.modality == "MR" for se in dataset.series(modality="MR"))
    assert pickle.loads(pickle.dumps(dataset)) == dataset, "ships to workers as it is"


def test_a_dataset_opens_by_its_folder_name_under_the_datasets_home(tree: Path,
                                                                    tmp_path: Path) -> None:
    home = tmp_path / "datasets"
    home.mkdir()
    (home / "demo-cohort").symlink_to(tree)
    assert open_dataset("demo-cohort", home=home).info.id == tree.name
    with pytest.raises(DataError) as missing:
        open_dataset("no-such-folder", home=home)
    assert missing.value.code == "dataset_not_found"


def test_a_series_loads_as_pydicom_reads_it_rescaled_and_in_order(tree: Path) -> None:
    dataset = open_dataset(tree)
    for record in (dataset.series(modality="CT")[0], dataset.series(modality="MR")[0]):
        volume = dataset.load_series(record)
        assert volume.shape == (record.instances, record.rows, record.columns)
        assert volume.dtype == np.float32
        slices = [pydicom.dcmread(p) for p in sorted((tree / record.folder).glob("*.dcm"))]
        slices.sort(key=lambda ds: int(ds.InstanceNumber))
        expected = np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1))
                             + float(ds.get("RescaleIntercept", 0)) for ds in slices])
        np.testing.assert_array_equal(volume, expected.astype(np.float32))
    ct = dataset.load_series(dataset.series(modality="CT")[0].series_uid)
    assert ct.min() < -900, "CT is in Hounsfield units: air is about -1000"


def test_slices_are_stacked_in_space_whatever_their_file_names(tree: Path,
                                                                writable_copy: Path) -> None:
    record = open_dataset(tree).series()[0]
    files = sorted((writable_copy / record.folder).glob("*.dcm"))
    first, last = files[0].read_bytes(), files[-1].read_bytes()
    files[0].write_bytes(last)
    files[-1].write_bytes(first)
    np.testing.assert_array_equal(open_dataset(writable_copy).load_series(record),
                                  open_dataset(tree).load_series(record))


def test_a_corrupted_file_is_named_relative_to_the_dataset(writable_copy: Path) -> None:
    dataset = open_dataset(writable_copy)
    record = dataset.series()[0]
    victim = sorted((writable_copy / record.folder).glob("*.dcm"))[1]
    victim.write_bytes(b"not a DICOM file at all" * 10)
    with pytest.raises(DataError) as caught:
        dataset.load_series(record)
    relative = victim.relative_to(writable_copy).as_posix()
    assert caught.value.code == "file_unreadable" and caught.value.path == relative
    assert str(caught.value).startswith(relative) and str(writable_copy) not in str(caught.value)


def test_an_image_of_another_shape_than_the_index_says_is_refused(writable_copy: Path) -> None:
    dataset = open_dataset(writable_copy)
    record = dataset.series()[0]
    victim = sorted((writable_copy / record.folder).glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    ds.Rows, ds.Columns = 16, 64  # same number of pixels, another shape
    ds.save_as(victim)
    with pytest.raises(DataError) as caught:
        dataset.load_series(record)
    assert caught.value.code == "series_mismatch"
    assert caught.value.path == victim.relative_to(writable_copy).as_posix()
    assert "32 rows by 32 columns" in str(caught.value)


def test_a_missing_instance_and_a_bad_index_are_clear_errors(writable_copy: Path) -> None:
    dataset = open_dataset(writable_copy)
    record = dataset.series()[0]
    sorted((writable_copy / record.folder).glob("*.dcm"))[-1].unlink()
    with pytest.raises(DataError) as missing:
        dataset.load_series(record)
    assert missing.value.code == "series_mismatch" and missing.value.path == record.folder
    index = writable_copy / "index.json"
    document = json.loads(index.read_text())
    document["subjects"][0]["studies"][0]["series"][0]["folder"] = "../../etc"
    index.write_text(json.dumps(document))
    with pytest.raises(DataError) as escaping:
        open_dataset(writable_copy)
    assert escaping.value.code == "index_invalid" and escaping.value.path == "index.json"
    index.write_text("{not json")
    with pytest.raises(DataError) as garbled:
        open_dataset(writable_copy)
    assert garbled.value.code == "index_invalid"


# ---- the decoded-series cache and the PyTorch Dataset -------------------------------------

def test_the_cache_serves_the_second_read_and_never_writes_into_the_dataset(
        tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, before = open_dataset(tree), _snapshot(tree)
    cache = SeriesCache(tmp_path / "persistent" / "cache")
    record = dataset.series()[0]
    first = cache.load(dataset, record)
    entry = tmp_path / "persistent" / "cache" / dataset.cache_key() / f"{record.series_uid}.npy"
    assert entry.is_file() and [p.name for p in entry.parent.iterdir()] == [entry.name], \
        "written under its final name only, no temporary left"

    def no_decoding(self, series):
        raise AssertionError("the second read decoded the series again")

    monkeypatch.setattr(MountedDataset, "load_series", no_decoding)
    np.testing.assert_array_equal(cache.load(dataset, record), first)
    monkeypatch.undo()
    with pytest.raises(DataError) as inside:
        SeriesCache(tree / "cache").load(dataset, record)
    assert inside.value.code == "cache_in_dataset"
    assert _snapshot(tree) == before


def test_the_torch_dataset_feeds_a_dataloader_with_workers(tree: Path, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from batch_tools.data import SeriesDataset

    before = _snapshot(tree)
    data = SeriesDataset(tree, label_key="diagnosis", shape=(8, 24, 24),
                         cache_dir=tmp_path / "cache")
    dataset = open_dataset(tree)
    assert len(data) == len(dataset.series())
    assert data.classes == sorted({s.diagnosis for s in dataset.subjects
                                   if any(st.series for st in s.studies)})
    volumes, labels = [], []
    for batch, batch_labels in DataLoader(data, batch_size=3, num_workers=2):
        volumes.append(batch)
        labels += batch_labels.tolist()
    stacked = np.concatenate([v.numpy() for v in volumes])
    assert stacked.shape == (len(data), 1, 8, 24, 24) and stacked.dtype == np.float32
    assert np.allclose(stacked.mean(axis=(1, 2, 3, 4)), 0, atol=1e-4)
    assert labels == [data.classes.index(dataset.subject(se.subject).diagnosis)
                      for se in dataset.series()]
    np.testing.assert_array_equal(data[0][0].numpy(), stacked[0])  # deterministic
    assert len(list(SeriesCache(tmp_path / "cache").entries(dataset))) == len(data)
    assert _snapshot(tree) == before
    by_sex = SeriesDataset(tree, label_key="sex", shape=(4, 8, 8))
    assert set(by_sex.classes) <= {"F", "M"}
    with pytest.raises(DataError) as unknown:
        SeriesDataset(tree, label_key="diagnosis", classes=["glioma"])
    assert unknown.value.code in ("label_unknown", "no_series")


# ---- Spark --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spark():
    from batch_tools.spark import spark_session

    session = spark_session("batch-data-tests")
    yield session
    session.stop()


def test_spark_is_local_on_loopback_without_a_ui(spark) -> None:
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master == "local[2]"
    assert conf.get("spark.ui.enabled") == "false"
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert os.environ["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_spark_reads_the_index_and_the_clinical_data(spark, tree: Path) -> None:
    from batch_tools.spark import clinical_frame, series_frame

    dataset = open_dataset(tree)
    series = series_frame(spark, dataset)
    assert series.count() == len(dataset.series())
    assert {r.series_uid for r in series.collect()} == {s.series_uid for s in dataset.series()}
    by_modality = {r.modality: r["sum(instances)"]
                   for r in series.groupBy("modality").sum("instances").collect()}
    assert by_modality == {m: sum(s.instances for s in dataset.series(modality=m))
                           for m in ("CT", "MR")}
    clinical = clinical_frame(spark, str(tree))  # by its path as well as opened
    assert clinical.count() == len(dataset.subjects)
    assert {"subject", "age", "sex", "diagnosis"} <= set(clinical.columns)
    ages = {r.subject: r.age for r in clinical.collect()}
    assert ages == {s.subject: s.age for s in dataset.subjects}


# ---- the example jobs ---------------------------------------------------------------------

def _run_example(name: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", f"batch_tools.examples.{name}", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_train_classifier_writes_a_model_and_its_metrics(tree: Path, tmp_path: Path) -> None:
    import torch

    before = _snapshot(tree)
    out = tmp_path / "out"
    done = _run_example("train_classifier", str(tree), "--epochs", "2", "--shape", "8", "24",
                        "24", "--cache", str(tmp_path / "cache"),
                        env={"VRE_JOB_OUTPUT": str(out)})
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert all(np.isfinite(e["loss"]) and 0 <= e["accuracy"] <= 1 for e in metrics["epochs"])
    assert 0 <= metrics["accuracy"] <= 1 and metrics["series"] == len(open_dataset(tree).series())
    assert metrics["dataset"]["content_hash"] == open_dataset(tree).info.content_hash
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["classes"] == metrics["classes"] and saved["state_dict"]
    assert _snapshot(tree) == before
    for example in ("train_classifier", "series_statistics"):
        refused = _run_example(example, str(tree), env={"VRE_JOB_OUTPUT": ""})
        assert refused.returncode == 2 and "VRE_JOB_OUTPUT" in refused.stderr


def test_series_statistics_computes_per_series_figures_with_spark(spark, tree: Path,
                                                                 tmp_path: Path) -> None:
    import csv

    from batch_tools.examples import series_statistics

    # In this process, on the module's Spark session (a second JVM would double the cost):
    # the job's own entry point, from its arguments to its files.
    assert series_statistics.main([str(tree), str(tmp_path / "out")]) == 0
    assert not spark.sparkContext._jsc.sc().isStopped(), "a caller's session stays open"
    dataset = open_dataset(tree)
    with open(tmp_path / "out" / "series_statistics.csv", newline="") as rows:
        table = {r["series_uid"]: r for r in csv.DictReader(rows)}
    assert set(table) == {s.series_uid for s in dataset.series()}
    record = dataset.series()[0]
    volume = dataset.load_series(record)
    row = table[record.series_uid]
    assert int(row["instances"]) == record.instances and int(row["voxels"]) == volume.size
    assert float(row["min"]) == volume.min() and float(row["max"]) == volume.max()
    assert float(row["mean"]) == pytest.approx(float(volume.mean(dtype="float64")))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["series"] == len(table)
    assert {(g["modality"], g["body_part"]) for g in summary["groups"]} == \
        {(s.modality, s.body_part) for s in dataset.series()}
    assert sum(g["instances"] for g in summary["groups"]) == \
        sum(s.instances for s in dataset.series())


def test_reading_an_index_imports_neither_torch_nor_spark_nor_server_code() -> None:
    probe = ("import sys, batch_tools.data as d; "
             "bad = [m for m in ('torch', 'pyspark', 'flask', 'sqlalchemy', 'web3', 'portal', "
             "'dataset_service', 'tracer') if m in sys.modules]; print(bad)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_tree_stays_read_only(tree: Path) -> None:
    assert all(not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
               for p in tree.rglob("*.dcm"))
