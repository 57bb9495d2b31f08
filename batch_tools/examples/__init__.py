"""Example jobs researchers can run as they are or start from: `python -m
batch_tools.examples.<name> DATASET [OUTPUT]`, OUTPUT defaulting to $VRE_JOB_OUTPUT."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def job_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every example takes: the dataset and where results go."""
    parser.add_argument("dataset", help="the dataset's folder under ~/datasets, or its path")
    parser.add_argument("output", nargs="?", type=Path,
                        help="where results are written (default: $VRE_JOB_OUTPUT)")


def output_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The output folder named on the command line, else $VRE_JOB_OUTPUT; created."""
    chosen = args.output or (Path(os.environ["VRE_JOB_OUTPUT"])
                             if os.environ.get("VRE_JOB_OUTPUT") else None)
    if chosen is None:
        parser.error("name an output folder, or run where VRE_JOB_OUTPUT is set")
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen
