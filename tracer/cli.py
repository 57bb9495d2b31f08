"""`vre-trace`: verify the ledger against the chain, prove one trace, deploy the anchor
contract, see the anchoring status, and run the anchoring worker."""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from tracer.chain import ChainClient, ChainError
from tracer.chain_config import chain_client, contract_address, contract_file
from tracer.checkpoints import Checkpoint, CheckpointError, load_public_key, verify_checkpoint
from tracer.client import TracerClient, TracerError, TraceVerifier
from tracer.verify import ExpectedRoot, IndexedLogVerifier, LogVerifier, VerifyReport
from vre.config import Config, ConfigError, load_config
from vre.service_auth import TokenSource, command_line_tokens

PAGE = 20_000
AHEAD = 2


def tokens(config: Config, args: argparse.Namespace) -> TokenSource | None:
    return command_line_tokens(config, getattr(args, "token", None),
                               getattr(args, "user", None), client="tracer")


def expected_roots(tracer: TracerClient, chain: ChainClient) -> list[ExpectedRoot]:
    """What the log must match: every chain anchor, and every checkpoint the tracer signed."""
    expected = [ExpectedRoot(a.tree_size, a.root, f"chain anchor #{a.index}")
                for a in chain.anchors()]
    listing = tracer.checkpoints(limit=1000)
    public = load_public_key(listing["public_key"])
    while listing["checkpoints"]:
        for item in listing["checkpoints"]:
            checkpoint = Checkpoint.parse(item["note"].encode())
            verify_checkpoint(checkpoint, base64.b64decode(item["signature"]), public)
            expected.append(ExpectedRoot(checkpoint.tree_size, checkpoint.root,
                                         "signed checkpoint"))
        listing = tracer.checkpoints(before=listing["checkpoints"][-1]["tree_size"], limit=1000)
    return expected


def run_verify(tracer: TracerClient, chain: ChainClient) -> VerifyReport:
    """Fetch everything and check it, the lookup columns and dataset links stored beside each
    trace and the table of public histories too (as `--home` does from the database); the
    report names the first bad sequence number."""
    checker = IndexedLogVerifier(LogVerifier(expected_roots(tracer, chain)))
    # Pages download ahead while earlier ones are checked: the database, the tracer and this
    # process work in parallel. A short page marks the end of the log.
    with ThreadPoolExecutor(max_workers=AHEAD) as pool:
        upcoming = deque(pool.submit(tracer.indexed_entries, k * PAGE, PAGE)
                         for k in range(AHEAD))
        requested = AHEAD
        while True:
            log_size, entries = upcoming.popleft().result()
            if len(entries) == PAGE:
                upcoming.append(pool.submit(tracer.indexed_entries, requested * PAGE, PAGE))
                requested += 1
            for entry in entries:
                if not checker.feed(entry):
                    return checker.verifier.finish(log_size)
            if len(entries) < PAGE:
                for pending in upcoming:
                    pending.cancel()
                break
    index = tracer.log_index()
    # Traces may have arrived since the last page: publications among them are checked by
    # the next run; one placed where no trace of the log ever was is wrong now.
    published = {dataset_id: seq for dataset_id, seq in index["published"].items()
                 if seq < checker.end or seq >= index["log_size"]}
    return checker.finish(log_size, index["stray_link"], published)


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    started = time.perf_counter()
    if args.direct_home:
        # Straight from the database and the chain: needs no running service.
        from tracer.audit import chain_for, verify_database

        with chain_for(config, args.contract, as_tracer=args.strict_owner) as chain:
            if args.strict_owner:
                chain.check_contract(chain.address or "")
            report = verify_database(config, chain)
    else:
        address = args.contract or contract_address(config)
        if address is None:
            print("vre-trace: no anchor contract configured (VRE_CHAIN_CONTRACT)",
                  file=sys.stderr)
            return 2
        tracer = TracerClient(args.tracer or config.url_of("tracer"), tokens(config, args))
        chain = chain_client(config, address, writer=args.strict_owner)
        if args.strict_owner:
            chain.check_contract(address)
        report = run_verify(tracer, chain)
    elapsed = time.perf_counter() - started
    rate = report.leaves / elapsed if elapsed else 0.0
    print(f"log size {report.log_size}, anchored {report.anchored_size}, "
          f"verified {report.leaves} leaves and {report.roots_checked} roots "
          f"in {elapsed:.2f} s ({rate:,.0f} leaves/s)")
    for note in report.notes:
        print(f"note: {note}")
    if report.divergence is not None:
        print(f"FAILED: {report.divergence}")
        return 1
    print("OK: the log matches every anchored and signed root")
    return 0


def cmd_prove(args: argparse.Namespace, config: Config) -> int:
    address = args.contract or contract_address(config)
    tracer = TracerClient(args.tracer or config.url_of("tracer"), tokens(config, args))
    chain = chain_client(config, address)
    anchor = chain.latest_anchor()
    if anchor is None:
        print("vre-trace: nothing is anchored on the chain yet", file=sys.stderr)
        return 1
    trace = tracer.get(args.trace_id)
    proof = tracer.proof(args.trace_id, tree_size=anchor.tree_size) \
        if trace["seq"] < anchor.tree_size else None
    print(json.dumps({"trace": trace, "proof": proof,
                      "anchor": {"index": anchor.index, "tree_size": anchor.tree_size,
                                 "root": anchor.root.hex()}}, indent=2))
    check = TraceVerifier(tracer, chain).check([trace])[trace["id"]]
    if not check.verified:
        print(f"FAILED: {check.reason}")
        return 1
    print(f"OK: trace {args.trace_id} is leaf {trace['seq']} of the tree of size "
          f"{check.tree_size} anchored on chain (anchor #{check.anchor_index})")
    return 0


def cmd_deploy(args: argparse.Namespace, config: Config) -> int:
    existing = contract_address(config)
    if existing and not args.force_new:
        print(f"vre-trace: a contract is already configured ({existing}); refusing to deploy "
              "over an existing history (use --force-new for a new, empty ledger)",
              file=sys.stderr)
        return 1
    chain = chain_client(config, None, writer=True)
    address = chain.deploy()
    if args.save:
        path = contract_file(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"address": address, "chain_url": config.chain_rpc_url}))
    print(address)
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    address = contract_address(config)
    tracer = TracerClient(config.url_of("tracer"), tokens(config, args))
    listing = tracer.checkpoints(limit=1)
    latest = listing["checkpoints"][0] if listing["checkpoints"] else None
    print(f"tracer: {config.url_of('tracer')}  key {listing['key_id']}")
    print(f"latest checkpoint: {latest['tree_size'] if latest else 'none'}")
    try:
        anchor = chain_client(config, address).latest_anchor() if address else None
        print(f"chain: {config.chain_rpc_url}  contract {address or 'none'}  latest anchor: "
              f"{anchor.tree_size if anchor else 'none'}")
    except ChainError as exc:
        print(f"chain: unavailable ({exc})")
        return 1
    if latest and anchor is not None and latest["tree_size"] > anchor.tree_size:
        print(f"anchoring lag: {latest['tree_size'] - anchor.tree_size} traces")
    return 0


def cmd_worker(args: argparse.Namespace, config: Config) -> int:
    """Run the anchoring worker until SIGTERM/SIGINT."""
    from tracer.anchoring import Anchorer, AnchorPolicy, StepResult
    from tracer.checkpoints import CheckpointSigner
    from vre.db import Database
    from vre.logs import configure_logging
    from vre.services import service

    configure_logging("tracer-anchor", config.log_level)
    address = contract_address(config)
    if address is None:
        raise ConfigError("VRE_CHAIN_CONTRACT", "no anchor contract; run 'vre-trace deploy'")
    svc = service("tracer")
    anchorer = Anchorer(
        Database.for_service(config, svc.name, svc.migrations),
        chain_client(config, address, writer=True), address,
        CheckpointSigner.from_file(config.tracer_key_path), config.ledger_origin,
        AnchorPolicy(config.anchor_interval_seconds, config.anchor_batch_traces,
                     per_trace=config.anchor_mode == "per-trace"))
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    status_file = config.home / "run" / "anchor-status.json"
    status_file.parent.mkdir(parents=True, exist_ok=True)

    def report(result: StepResult) -> None:
        # `vre up` waits for this file; `vre status` and operators read it.
        status_file.write_text(json.dumps({**asdict(result), "at": time.time()}))

    anchorer.run(lambda: stopping, on_step=report)
    status_file.unlink(missing_ok=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre-trace", description=__doc__)
    parser.add_argument("--home", help="data directory (default: $VRE_HOME or ./var)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_auth(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracer", help="tracer base URL (default: from configuration)")
        p.add_argument("--contract", help="anchor contract address (default: configured)")
        p.add_argument("--token", help="bearer token to read the log with")
        p.add_argument("--user", help="sign in as this user; password read from stdin")

    verify = sub.add_parser("verify", help="check the whole log against the chain")
    with_auth(verify)
    verify.add_argument("--home", dest="direct_home", metavar="DIR",
                        help="read the log straight from this data directory's database and "
                        "chain, with no service running; also checks the columns and index "
                        "the log's queries answer from")
    verify.add_argument("--strict-owner", action="store_true",
                        help="also require the contract to be owned by our configured key")
    verify.set_defaults(func=cmd_verify)
    prove = sub.add_parser("prove", help="prove one trace against the latest chain anchor")
    with_auth(prove)
    prove.add_argument("trace_id")
    prove.set_defaults(func=cmd_prove)
    deploy = sub.add_parser("deploy", help="deploy a new anchor contract")
    deploy.add_argument("--save", action="store_true", help="record it in the data directory")
    deploy.add_argument("--force-new", action="store_true")
    deploy.set_defaults(func=cmd_deploy)
    status = sub.add_parser("status", help="checkpoints and chain anchoring status")
    status.set_defaults(func=cmd_status)
    worker = sub.add_parser("worker", help="run the anchoring worker")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        home = getattr(args, "direct_home", None) or args.home
        overrides: dict[str, Any] = {"home": Path(home)} if home else {}
        config = load_config(**overrides)
        return args.func(args, config)
    except ConfigError as exc:
        print(f"vre-trace: configuration: {exc}", file=sys.stderr)
        return 2
    except (ChainError, TracerError, CheckpointError) as exc:
        print(f"vre-trace: {exc}", file=sys.stderr)
        return 1
