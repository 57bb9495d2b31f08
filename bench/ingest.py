"""Ingestion throughput, on the same generated files in one run: (a) files/s through the
dataset service's real ingestion (`dataset_service.ingest.Ingestor`, the path `vre-dataset
ingest` and POST /api/v1/ingest take: parallel header readers, validation and
de-identification checks, the content-addressed repository, rows in the database), (b)
files/s of the naive ingester it must beat (one process: pydicom reads each header without
pixel data, then the file is hashed with SHA-256; nothing validated, stored or recorded),
(c) their ratio.

The files come from the demo generator (`dataset_service.demo`), deterministic from a seed,
and are read from the page cache by both (flushed to disk before the first round), so the
naive loop reads at memory speed; the Ingestor also writes every file into the repository
and makes it durable, which the naive loop never does. Each round runs both, the Ingestor on
a fresh database and repository; the first round also starts the process server its header
readers are forked from (once per service process), so it is shown but left out of the
warm figures.

Usage: .venv/bin/python bench/ingest.py [--files 3000] [--seed 7] [--workers 0]
            [--repeat 4] [--database-url URL]
Needs, by default, the PostgreSQL on 127.0.0.1:5432 ('' for SQLite).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pydicom

from dataset_service.demo import DemoSpec, DemoSummary, generate_demo_data
from dataset_service.dicom import DeidPolicy
from dataset_service.ingest import Ingestor, IngestReport
from dataset_service.models import Project
from dataset_service.repository import Repository
from vre.config import Config, load_config
from vre.db import Database, drop_schemas

SERVICE, MIGRATIONS = "dataset_service", "dataset_service:migrations"
# Files per subject of the default DemoSpec, about (1.5 studies x 2 series x 16 slices, less
# in practice as seeds fall).
FILES_PER_SUBJECT = 40


def generate(out_dir: Path, files: int, seed: int) -> DemoSummary:
    """About `files` demo DICOM files (whole subjects) and their clinical table."""
    subjects = max(1, round(files / FILES_PER_SUBJECT))
    return generate_demo_data(out_dir, DemoSpec(seed=seed, subjects=subjects))


def plain_ingest_rate(paths: list[Path], store: Path, database_url: str | None) -> float:
    """Files/s of one process that ingests plainly: read, hash, store durably, one row each."""
    import shutil
    import sqlite3

    table = f"bench_plain_{uuid.uuid4().hex[:8]}"
    conn: Any = psycopg.connect(database_url) if database_url else \
        sqlite3.connect(store.parent / "plain.sqlite")
    placeholder = "%s" if database_url else "?"
    conn.execute(f"CREATE TABLE {table} (sop_uid TEXT PRIMARY KEY, sha256 TEXT, "
                 "modality TEXT, study_uid TEXT, series_uid TEXT, size BIGINT)")
    conn.commit()
    insert = f"INSERT INTO {table} VALUES ({', '.join([placeholder] * 6)})"
    try:
        started = time.perf_counter()
        for n, path in enumerate(paths, 1):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            target = store / digest[:2] / digest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            with open(target, "rb") as handle:
                os.fsync(handle.fileno())
            conn.execute(insert, (ds.SOPInstanceUID, digest, ds.Modality,
                                  ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                  path.stat().st_size))
            if n % 100 == 0:
                conn.commit()
        conn.commit()
        elapsed = time.perf_counter() - started
    finally:
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
        conn.close()
        shutil.rmtree(store, ignore_errors=True)
    return len(paths) / elapsed


def naive_rate(paths: list[Path]) -> float:
    """Files/s of one process that reads each header with pydicom and hashes the file."""
    started = time.perf_counter()
    digests = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        with open(path, "rb") as handle:
            digests.add((ds.SOPInstanceUID, hashlib.file_digest(handle, "sha256").hexdigest()))
    elapsed = time.perf_counter() - started
    assert len(digests) == len(paths)
    return len(paths) / elapsed


def make_config(home: Path, database_url: str | None) -> Config:
    values: dict[str, object] = {"home": home, "log_level": "WARNING"}
    if database_url:
        values.update(database_url=database_url,
                      database_schema_prefix=f"bench{os.getpid()}_{uuid.uuid4().hex[:6]}_")
    return load_config(env={}, **values)


def ingest_rate(config: Config, source: Path, workers: int) -> tuple[float, IngestReport]:
    """Files/s of one ingestion of `source` into a fresh database and repository."""
    db = Database.for_service(config, SERVICE, MIGRATIONS)
    try:
        db.migrate(config, SERVICE)
        with db.session() as session:
            project = Project(name="bench", title="Bench", created_by="bench")
            session.add(project)
            session.flush()
            project_id = project.id
        ingestor = Ingestor(db, Repository(config.repository_path), DeidPolicy(), workers)
        started = time.perf_counter()
        report = ingestor.run(ingestor.start(project_id, source, "bench"))
        elapsed = time.perf_counter() - started
    finally:
        db.engine.dispose()
    return report.files_ingested / elapsed, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000,
                        help="about this many files (whole demo subjects of ~48 files)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=0,
                        help="the ingestor's header readers (0: one a core, as configured)")
    parser.add_argument("--repeat", type=int, default=4,
                        help="rounds of (naive loop, Ingestor), each Ingestor run on a fresh "
                             "database and repository")
    parser.add_argument("--database-url",
                        default="postgresql://postgres@127.0.0.1:5432/test",
                        help="'' for SQLite in the temporary data directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vre-bench-ingest-") as tmp:
        source = Path(tmp) / "in"
        started = time.perf_counter()
        summary = generate(source, args.files, args.seed)
        os.sync()  # neither side should pay for writing the generated files back
        paths = list(summary.files)
        print(f"{len(paths):,} files ({summary.bytes / 2**20:,.1f} MiB, {summary.studies} "
              f"studies, {summary.subjects} subjects, seed {args.seed}) generated in "
              f"{time.perf_counter() - started:.1f} s; database "
              f"{'PostgreSQL' if args.database_url else 'SQLite'}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.2f} before")
        naive, plain, real = [], [], []
        print(f"{'round':>5} {'(a) Ingestor':>13} {'(b) plain':>10} {'(c) a/b':>8} "
              f"{'(r) read+hash':>14}  files/s")
        for n in range(args.repeat):
            naive.append(naive_rate(paths))
            plain.append(plain_ingest_rate(paths, Path(tmp) / f"plain-{n}",
                                           args.database_url or None))
            config = make_config(Path(tmp) / f"home-{n}", args.database_url or None)
            try:
                rate, report = ingest_rate(config, source, args.workers)
            finally:
                if args.database_url:
                    drop_schemas(args.database_url, config.database_schema_prefix)
            if report.files_ingested != len(paths) or report.files_quarantined:
                raise SystemExit(f"ingestion did not take every file: {report.counts()}")
            real.append(rate)
            note = "  (cold: the first run starts the header readers' server)" if n == 0 else ""
            print(f"{n + 1:>5} {rate:13,.0f} {plain[-1]:10,.0f} {rate / plain[-1]:7.2f}x "
                  f"{naive[-1]:14,.0f}{note}")
        warm = slice(1, None) if args.repeat > 1 else slice(None)
        ratios = [a / b for a, b in zip(real[warm], plain[warm], strict=True)]
        print(f"warm rounds: (a) {min(real[warm]):,.0f}..{max(real[warm]):,.0f} files/s "
              f"(median {statistics.median(real[warm]):,.0f}), (b) {min(plain[warm]):,.0f}.."
              f"{max(plain[warm]):,.0f} (median {statistics.median(plain[warm]):,.0f}), (c) "
              f"{min(ratios):.2f}..{max(ratios):.2f}x (median {statistics.median(ratios):.2f}x)"
              f"; target (a) >= 1,500 files/s and (c) >= 1.6x; (r) read+hash alone "
              f"{statistics.median(naive[warm]):,.0f} files/s")
        print(f"load average {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
