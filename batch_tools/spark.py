"""Spark for jobs: one place where a SparkSession is configured (local mode inside a
sandbox, loopback only), and a dataset's index and clinical data as DataFrames."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from batch_tools.data import MountedDataset, open_dataset

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# A workload has no network beyond loopback: the driver binds and advertises 127.0.0.1, and
# no web UI is started. A cluster's settings will join these here, chosen by `master`.
LOCAL_SETTINGS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "2",
    "spark.ui.showConsoleProgress": "false",
}


def session_settings(master: str = "local[2]",
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every setting a session gets, decided without starting one."""
    if not master.startswith("local"):
        raise ValueError(f"only local mode is configured here, not {master!r}")
    return {"spark.master": master, **LOCAL_SETTINGS, **(extra or {})}


def spark_session(app_name: str = "vre-job", master: str = "local[2]",
                  extra: Mapping[str, str] | None = None) -> SparkSession:
    """A SparkSession in local mode, bound to loopback, without a web UI."""
    # The sandbox has loopback only: whatever the environment says, Spark binds there.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    # Python workers run the interpreter of this job (its virtual environment, with pydicom
    # and batch_tools), not whichever python3 comes first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in session_settings(master, extra).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


_SERIES_COLUMNS = (
    ("subject", "string"), ("study_uid", "string"), ("series_uid", "string"),
    ("modality", "string"), ("body_part", "string"), ("description", "string"),
    ("manufacturer", "string"), ("rows", "int"), ("columns", "int"),
    ("slice_thickness", "double"), ("slice_spacing", "double"), ("instances", "int"),
    ("folder", "string"),
)


Source = MountedDataset | str | os.PathLike[str]


def _opened(dataset: Source) -> MountedDataset:
    return dataset if isinstance(dataset, MountedDataset) else open_dataset(dataset)


def series_rows(dataset: MountedDataset) -> list[tuple[Any, ...]]:
    return [tuple(getattr(se, name) for name, _ in _SERIES_COLUMNS) for se in dataset.series()]


def series_frame(spark: SparkSession, dataset: Source) -> DataFrame:
    """One row per series of the index (its folder relative to the dataset); `dataset` is
    an opened dataset, its path or its folder name under ~/datasets."""
    schema = ", ".join(f"`{name}` {kind}" for name, kind in _SERIES_COLUMNS)
    return spark.createDataFrame(series_rows(_opened(dataset)), schema)


def _column_kind(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "bigint"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in present):
        return "double"
    return "string"


def clinical_table(dataset: MountedDataset) -> tuple[list[tuple[str, str]], list[tuple]]:
    """The clinical data as (columns with their Spark types, rows), one row per subject:
    subject, age, sex, diagnosis, then every clinical key in name order."""
    keys = sorted({k for s in dataset.subjects for k in s.clinical}
                  - {"subject", "age", "sex", "diagnosis"})
    columns = [("subject", "string"), ("age", "int"), ("sex", "string"),
               ("diagnosis", "string")]
    for key in keys:
        columns.append((key, _column_kind([s.clinical.get(key) for s in dataset.subjects])))

    def cell(value: Any, kind: str) -> Any:
        if value is None:
            return None
        if kind == "string":
            return str(value)
        return float(value) if kind == "double" else value

    rows = [tuple([s.subject, s.age, s.sex, s.diagnosis]
                  + [cell(s.clinical.get(k), kind) for k, (_, kind) in zip(keys, columns[4:],
                                                                           strict=True)])
            for s in dataset.subjects]
    return columns, rows


def clinical_frame(spark: SparkSession, dataset: Source) -> DataFrame:
    """One row per subject: demographics, diagnosis and the clinical values."""
    columns, rows = clinical_table(_opened(dataset))
    schema = ", ".join(f"`{name}` {kind}" for name, kind in columns)
    return spark.createDataFrame(rows, schema)
