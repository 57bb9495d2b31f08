"""`vre-dataset`: the data steward's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from dataset_service.demo import DemoSpec, generate_demo_data


def cmd_demo(args: argparse.Namespace) -> int:
    """Write the synthetic demo DICOM series and clinical data into a folder."""
    summary = generate_demo_data(Path(args.out_dir), DemoSpec(seed=args.seed,
                                                              subjects=args.subjects))
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts().items())
    print(f"wrote {counts} to {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre-dataset", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate synthetic, de-identified demo data")
    demo.add_argument("out_dir")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--subjects", type=int, default=6)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
