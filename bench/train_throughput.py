"""Training-input throughput, in one run on the same dataset tree: series per second that the
example training (`batch_tools.examples.train_classifier`) gets from (a) `batch_tools`'
SeriesDataset in a DataLoader with worker processes and the decoded-series cache (warm:
after the first epoch filled it), against (b) the naive loop it must beat (one process:
pydicom reads every file of a series, the slices are sorted by InstanceNumber and rescaled),
with their ratio. Both hand the model the same tensors (resized and normalised alike), on
the GPU when torch.cuda.is_available(), else on the CPU; the cold first epoch (decoding and
filling the cache) is shown too.

The tree is made as a release makes it: demo studies (`dataset_service.demo`) ingested by the
dataset service's Ingestor into SQLite, a dataset of all of them, and its tree built by
`datasets.ensure_tree` (hard links plus index.json).

Usage: .venv/bin/python bench/train_throughput.py [--subjects 12] [--rows 128]
            [--workers 2] [--batch-size 4] [--epochs 3] [--shape 32 96 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import sqlalchemy as sa
import torch
from torch.utils.data import DataLoader

from batch_tools.data import open_dataset
from batch_tools.torch_data import SeriesDataset, fit_volume
from dataset_service.datasets import content_hash, ensure_tree
from dataset_service.demo import DemoSpec, generate_demo_data
from dataset_service.dicom import DeidPolicy
from dataset_service.ingest import Ingestor
from dataset_service.models import Dataset, DatasetStudy, Project, Study
from dataset_service.repository import Repository
from vre.config import load_config
from vre.db import Database

SERVICE, MIGRATIONS = "dataset_service", "dataset_service:migrations"


def build_tree(home: Path, spec: DemoSpec) -> Path:
    """A released-style tree of every demo study, built by the dataset service's own code."""
    config = load_config(env={}, home=home, log_level="WARNING")
    db = Database.for_service(config, SERVICE, MIGRATIONS)
    try:
        db.migrate(config, SERVICE)
        with db.session() as session:
            project = Project(name="bench", title="Bench", created_by="bench")
            session.add(project)
            session.flush()
            project_id = project.id
        generate_demo_data(home / "in", spec)
        repository = Repository(config.repository_path)
        ingestor = Ingestor(db, repository, DeidPolicy(), 0)
        ingestor.run(ingestor.start(project_id, home / "in", "bench"))
        with db.session() as session:
            rows = list(session.scalars(sa.select(Study).where(
                Study.project_id == project_id)))
            dataset = Dataset(project_id=project_id, name="Bench", license_id="CC-BY-4.0",
                              license_url="https://creativecommons.org/licenses/by/4.0/",
                              contact_name="Bench", contact_email="bench@example.org",
                              content_hash=content_hash(rows), created_by="bench")
            session.add(dataset)
            session.flush()
            session.add_all(DatasetStudy(dataset_id=dataset.id, study_id=s.id) for s in rows)
            session.flush()
            return Path(ensure_tree(session, repository, dataset))
    finally:
        db.engine.dispose()


def naive_epoch(root: Path, folders: list[str], shape: tuple[int, ...],
                device: torch.device) -> float:
    """Series/s of one process reading every file with pydicom, as a first script would."""
    started = time.perf_counter()
    for folder in folders:
        slices = [pydicom.dcmread(p) for p in sorted((root / folder).glob("*.dcm"))]
        slices.sort(key=lambda ds: int(ds.InstanceNumber))
        volume = np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1))
                           + float(ds.get("RescaleIntercept", 0)) for ds in slices])
        fit_volume(volume, shape)[None].to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(folders) / (time.perf_counter() - started)


def loader_epoch(loader: DataLoader, device: torch.device) -> float:
    """Series/s of one pass of the DataLoader, batches moved to `device`."""
    started, seen = time.perf_counter(), 0
    for volumes, labels in loader:
        volumes.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--rows", type=int, default=128, help="rows and columns per image")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="warm epochs measured")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 96, 96))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(prefix="vre-bench-train-") as tmp:
        spec = DemoSpec(seed=args.seed, subjects=args.subjects, rows=args.rows,
                        cols=args.rows, slices_per_series=(16, 48))
        started = time.perf_counter()
        root = build_tree(Path(tmp) / "home", spec)
        dataset = open_dataset(root)
        series = dataset.series()
        files = sum(s.instances for s in series)
        print(f"{len(series)} series, {files} files of {args.rows}x{args.rows} (tree built in "
              f"{time.perf_counter() - started:.1f} s); device {device}, {os.cpu_count()} "
              f"cores, {args.workers} workers, load average {os.getloadavg()[0]:.2f}")
        data = SeriesDataset(dataset, shape=shape, cache_dir=Path(tmp) / "persistent" / "cache")
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True,
                            num_workers=args.workers, persistent_workers=args.workers > 0,
                            pin_memory=device.type == "cuda")
        folders = [s.folder for s in series]
        cold = loader_epoch(loader, device)  # decodes every series and fills the cache
        naive, warm = [], []
        for _ in range(args.epochs):
            naive.append(naive_epoch(root, folders, shape, device))
            warm.append(loader_epoch(loader, device))
        a, b = statistics.median(warm), statistics.median(naive)
        print(f"(a) batch_tools DataLoader, cached: {a:8.1f} series/s (median of "
              f"{args.epochs}; cold first epoch {cold:.1f})")
        print(f"(b) naive pydicom loop:             {b:8.1f} series/s")
        print(f"(c) ratio a/b:                      {a / b:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
