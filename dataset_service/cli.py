"""`vre-dataset`: the data steward's command line."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import requests

from dataset_service import dropfolders
from dataset_service.demo import DemoSpec, generate_demo_data
from vre.config import Config, load_config
from vre.service_auth import command_line_tokens


def cmd_demo(args: argparse.Namespace) -> int:
    """Write the synthetic demo DICOM series and clinical data into a folder."""
    summary = generate_demo_data(Path(args.out_dir), DemoSpec(seed=args.seed,
                                                              subjects=args.subjects))
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts().items())
    print(f"wrote {counts} to {args.out_dir}")
    return 0


def _client(config: Config, args: argparse.Namespace) -> tuple[requests.Session, str]:
    tokens = command_line_tokens(config, args.token, args.user, client="dataset_service")
    if tokens is None:
        raise SystemExit("vre-dataset: say who you are with --token or --user")
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {tokens.token()}"
    return http, config.url_of("dataset_service") + "/api/v1"


def _answer(response: requests.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError):
            message = f"HTTP {response.status_code}"
        raise SystemExit(f"vre-dataset: {message}")
    return response.json()


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files"


def into_drop_folder(path: Path, folder: Path) -> str:
    """The path to ask the service for: a folder already in the project's drop folder as is
    (relative to it); any other folder first hard-linked (copied across file systems) into
    it under its own name, links kept as links, which ingestion passes over."""
    source = path.resolve()
    base = folder.resolve()
    if source == base or base in source.parents:
        return dropfolders.shown(source, base)
    target = base / source.name
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy,
                    dirs_exist_ok=True)
    return source.name


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.lexists(dst):
        if os.path.samefile(src, dst):
            return
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest a folder into a project through the service; show progress, then the report.
    A folder of this machine is first placed in the project's drop folder, the only place
    the service ingests from; any other path is taken as relative to that drop folder."""
    config = load_config(**({"home": Path(args.home)} if args.home else {}))
    http, base = _client(config, args)
    path = args.path
    if Path(path).is_dir():
        name = args.project
        if not dropfolders.is_project_name(name):  # an id: drop folders go by name
            name = _answer(http.get(f"{base}/projects/{name}", timeout=30))["name"]
        path = into_drop_folder(Path(path), dropfolders.locate(config.import_root_path, name))
        print(f"ingesting {path} from the drop folder of project {name}", file=sys.stderr)
    run = _answer(http.post(base + "/ingest", json={"path": path, "project": args.project},
                            timeout=30))
    tty = sys.stderr.isatty()
    while run["state"] == "running":
        time.sleep(0.5)
        run = _answer(http.get(f"{base}/ingest/{run['id']}", timeout=30))
        counts = run["counts"]
        if tty:
            print("\r" + _bar(counts.get("read", 0), counts.get("files", 0)), end="",
                  file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    counts = run["counts"]
    print(f"ingestion {run['id']} {run['state']}: {counts.get('studies_ingested', 0)} studies "
          f"in ({counts.get('files_ingested', 0)} files), "
          f"{counts.get('studies_skipped', 0)} already there, "
          f"{counts.get('studies_quarantined', 0)} studies and "
          f"{counts.get('files_quarantined', 0)} files quarantined")
    for entry in run["quarantine"]:
        print(f"  quarantined {entry['path']}: {entry['reason']}: {entry['message']}")
    return 0 if run["state"] == "finished" else 1


def cmd_check_integrity(args: argparse.Namespace) -> int:
    """Recompute a dataset's content hash from its files and compare with the traced one."""
    config = load_config(**({"home": Path(args.home)} if args.home else {}))
    http, base = _client(config, args)
    report = _answer(http.get(f"{base}/datasets/{args.dataset_id}/integrity", timeout=600))
    print(f"dataset {report['dataset_id']}")
    print(f"  traced hash:     {report['traced_hash']}")
    print(f"  recorded hash:   {report['stored_hash']}")
    print(f"  recomputed hash: {report['recomputed_hash']}")
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    print("OK: the files are what was traced" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre-dataset", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate synthetic, de-identified demo data")
    demo.add_argument("out_dir")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--subjects", type=int, default=6)
    demo.set_defaults(func=cmd_demo)
    ingest = sub.add_parser("ingest", help="ingest a folder of DICOM studies into a project")
    ingest.add_argument("path")
    ingest.add_argument("--project", required=True)
    ingest.add_argument("--home", help="data directory (default: $VRE_HOME or ./var)")
    ingest.add_argument("--token", help="bearer token to act with")
    ingest.add_argument("--user", help="sign in as this user; password read from stdin")
    ingest.set_defaults(func=cmd_ingest)
    check = sub.add_parser("check-integrity",
                           help="recompute a dataset's content hash and compare with the ledger")
    check.add_argument("dataset_id")
    for p in (check,):
        p.add_argument("--home", help="data directory (default: $VRE_HOME or ./var)")
        p.add_argument("--token", help="bearer token to act with")
        p.add_argument("--user", help="sign in as this user; password read from stdin")
    check.set_defaults(func=cmd_check_integrity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
