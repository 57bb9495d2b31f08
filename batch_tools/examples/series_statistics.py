"""Example job: per-series intensity statistics with Spark, the pixels read on the executors,
grouped by modality and body part; writes series_statistics.csv and summary.json.

    python -m batch_tools.examples.series_statistics DATASET [OUTPUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from batch_tools.data import DataError, MountedDataset, open_dataset
from batch_tools.examples import job_arguments, output_folder

STATISTICS = ("voxels", "sum", "mean", "min", "max")
COLUMNS = ("subject", "study_uid", "series_uid", "modality", "body_part", "instances",
           *STATISTICS)


def series_statistics(dataset: MountedDataset, rows: Iterator[Any]) -> Iterator[tuple]:
    """Statistics of each series named in `rows` (Spark rows of series_frame), read from the
    dataset where this runs: on an executor, so the pixels never pass through the driver."""
    for row in rows:
        volume = dataset.load_series(row.series_uid)
        yield (row.subject, row.study_uid, row.series_uid, row.modality, row.body_part,
               int(volume.shape[0]), int(volume.size), float(volume.sum(dtype="float64")),
               float(volume.mean(dtype="float64")), float(volume.min()), float(volume.max()))


def run(dataset: MountedDataset, spark: Any) -> tuple[list[dict], list[dict]]:
    """(one dict per series, one per modality and body part) computed with `spark`."""
    from pyspark.sql import functions as f

    from batch_tools.spark import series_frame

    index = series_frame(spark, dataset)
    schema = ("subject string, study_uid string, series_uid string, modality string, "
              "body_part string, instances int, voxels bigint, sum double, mean double, "
              "min double, max double")
    partitions = max(1, min(index.count(), spark.sparkContext.defaultParallelism))
    per_series = spark.createDataFrame(
        index.repartition(partitions).rdd.mapPartitions(
            lambda rows: series_statistics(dataset, rows)), schema).cache()
    groups = (per_series.groupBy("modality", "body_part")
              .agg(f.count("*").alias("series"), f.sum("instances").alias("instances"),
                   f.sum("voxels").alias("voxels"), f.sum("sum").alias("sum"),
                   f.min("min").alias("min"), f.max("max").alias("max"))
              .withColumn("mean", f.col("sum") / f.col("voxels")).drop("sum")
              .orderBy("modality", "body_part"))
    series = [r.asDict() for r in per_series.orderBy("subject", "study_uid",
                                                     "series_uid").collect()]
    summary = [r.asDict() for r in groups.collect()]
    per_series.unpersist()
    return series, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_tools.examples.series_statistics",
                                     description=__doc__.splitlines()[0])
    job_arguments(parser)
    args = parser.parse_args(argv)
    output = output_folder(parser, args)
    try:
        mounted = open_dataset(args.dataset)
    except DataError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    from pyspark.sql import SparkSession

    from batch_tools.spark import spark_session

    # A session already open in this process (a notebook's, a caller's) is used and left
    # open; one started here is stopped here.
    ours = SparkSession.getActiveSession() is None
    spark = spark_session("series-statistics")
    try:
        series, groups = run(mounted, spark)
    finally:
        if ours:
            spark.stop()
    with open(output / "series_statistics.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(series)
    summary = {"dataset": vars(mounted.info), "series": len(series),
               "instances": sum(s["instances"] for s in series), "groups": groups}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(series)} series in {len(groups)} modality/body part groups; wrote "
          f"{output / 'series_statistics.csv'} and summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
