"""The export airlock's automatic checks against plain hashing: the same folder of outputs (by
default 1 GB in 10,000 files: mostly CSV tables, text logs and binary blobs of varying sizes,
a few NumPy arrays) is hashed by `sha256sum` (one process, file lists passed by xargs) and
then checked file by file with `check_path` in this one process, as the platform checks a
request. Target: the checks take at most 2.0 times as long as sha256sum.

Both run warm: the files are read once before timing, so neither pays for the disk.

    .venv/bin/python bench/export_checks.py [--size-mb 1000] [--files 10000] [--seed 7]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from portal.exports.checks import Known, check_path

TARGET = 2.0


def csv_table(rng: random.Random, size: int) -> bytes:
    """Per-group results: a label, counts well above the threshold, and decimals."""
    rows = ["group,patients,mean_age,auc"]
    length = len(rows[0])
    while length < size:
        row = f"g{len(rows)},{rng.randint(10, 5000)},{rng.uniform(20, 90):.2f}," \
              f"{rng.random():.4f}"
        rows.append(row)
        length += len(row) + 1
    return ("\n".join(rows) + "\n").encode()


def text_log(rng: random.Random, size: int) -> bytes:
    words = ["epoch", "loss", "accuracy", "validation", "batch", "reading", "writing", "model",
             "checkpoint", "done"]
    lines, length = [], 0
    while length < size:
        line = f"step {rng.randint(0, 10**6)}: " + " ".join(rng.choices(words, k=8)) \
               + f" {rng.random():.5f}"
        lines.append(line)
        length += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def array(rng: random.Random, size: int) -> bytes:
    out = io.BytesIO()
    np.save(out, np.frombuffer(rng.randbytes(size - size % 4), dtype=np.float32))
    return out.getvalue()


def generate(folder: Path, total: int, count: int, seed: int) -> Counter:
    """`count` files of about `total` bytes together, sizes drawn log-uniformly."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0, 1.2) for _ in range(count)]
    scale = total / sum(weights)
    kinds: Counter = Counter()
    for index, weight in enumerate(weights):
        size = max(64, int(weight * scale))
        pick = rng.random()
        if pick < 0.01:
            kind, data = "npy", array(rng, size)
        elif pick < 0.40:
            kind, data = "csv", csv_table(rng, size)
        elif pick < 0.70:
            kind, data = "txt", text_log(rng, size)
        else:
            kind, data = "bin", os.urandom(size)
        kinds[kind] += 1
        (folder / f"{index // 1000:02d}").mkdir(exist_ok=True)
        (folder / f"{index // 1000:02d}" / f"out{index:05d}.{kind}").write_bytes(data)
    return kinds


def time_sha256sum(files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["xargs", "-0", "sha256sum"], input=b"\0".join(map(bytes, files)),
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def time_checks(files: list[Path], known: Known) -> tuple[float, Counter]:
    verdicts: Counter = Counter()
    started = time.perf_counter()
    for path in files:
        verdicts[check_path(path, known).verdict] += 1
    return time.perf_counter() - started, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    known = Known(
        repository_hashes=frozenset(f"{i:064x}" for i in range(10_000)),
        series_shapes=frozenset({(120, 512, 512), (512, 512)}),
        series_sizes=frozenset({120 * 512 * 512 * 2, 512 * 512 * 2}),
        identifiers=frozenset({f"1.2.826.0.1.3680043.8.498.{i}" for i in range(1000)}
                              | {f"SUBJ-{i:04d}" for i in range(200)}),
    )
    with tempfile.TemporaryDirectory(prefix="export-checks-") as temp:
        folder = Path(temp)
        kinds = generate(folder, args.size_mb * 1_000_000, args.files, args.seed)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        print(f"{len(files)} files, {total / 1e6:.0f} MB: {dict(sorted(kinds.items()))}")
        time_sha256sum(files)  # warm the page cache for both
        hashing = min(time_sha256sum(files) for _ in range(2))
        checking, verdicts = min((time_checks(files, known) for _ in range(2)),
                                 key=lambda r: r[0])
    ratio = checking / hashing
    print(f"sha256sum:     {hashing:7.2f} s ({total / hashing / 1e6:6.0f} MB/s)")
    print(f"check_path:    {checking:7.2f} s ({total / checking / 1e6:6.0f} MB/s), "
          f"one process; verdicts {dict(sorted(verdicts.items()))}")
    print(f"ratio:         {ratio:7.2f} (target at most {TARGET}: "
          f"{'met' if ratio <= TARGET else 'missed'})")


if __name__ == "__main__":
    main()
