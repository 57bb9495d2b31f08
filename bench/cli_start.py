"""How fast `vre-job --help` answers inside a workload, against the interpreter's own start
(`python -c pass`), measured in the same run: wall time of each, p50 over the runs, and their
ratio. A help that loads a server (Flask, SQLAlchemy, web3) or the configuration shows here.

Usage: .venv/bin/python bench/cli_start.py [--runs 10]
Runs `vre-job` from the environment's bin folder (`python -m batch_tools.cli` without it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds each run of argv takes, start to exit (one warm-up run first, not counted)."""
    times = []
    for n in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if n:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    script = shutil.which("vre-job", path=str(Path(sys.executable).parent))
    vre_job = [script, "--help"] if script else [sys.executable, "-m", "batch_tools.cli",
                                                 "--help"]
    baseline = statistics.median(wall_times([sys.executable, "-c", "pass"], args.runs))
    helped = statistics.median(wall_times(vre_job, args.runs))
    print(f"python -c pass   p50 {baseline * 1000:7.1f} ms  ({args.runs} runs)")
    print(f"vre-job --help   p50 {helped * 1000:7.1f} ms  ({args.runs} runs, "
          f"{'script' if script else 'python -m batch_tools.cli'})")
    print(f"ratio            {helped / baseline:7.2f}x the interpreter's start")


if __name__ == "__main__":
    main()
