"""Tracer throughput, against one chain node in one run: (a) traces/s acknowledged through
the batched API with anchoring running, each trace carrying its idempotency key as services'
outboxes send them (and, beside it, the same without keys: what checking them costs),
(b) traces/s when every trace waits for its own chain transaction (the design we replace),
(c) their ratio; plus inclusion-proof time at 1,000,000 leaves and leaves/s verified by
`vre-trace verify`.

Usage: .venv/bin/python bench/tracer_throughput.py [--seconds 15] [--database-url URL]
Needs `npm install` (anvil) and, by default, the PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

from tracer.chain_jsonrpc import JsonRpcChainClient
from tracer.checkpoints import CheckpointSigner
from tracer.cli import expected_roots, run_verify
from tracer.client import TracerClient
from tracer.devnode import ANVIL_DEV_PRIVATE_KEY, free_port, running_anvil
from tracer.merkle import MerkleTree, verify_inclusion
from tracer.verify import LogVerifier
from vre.config import Config, load_config, to_env
from vre.db import drop_schemas
from vre.service_auth import StaticToken
from vre.tokens import TokenIssuer, generate_signing_key

HASH = "sha256:" + "cd" * 32


def sample_trace(i: int) -> dict[str, object]:
    return {"actor": f"researcher-{i % 97}", "action": "USE_DATASETS",
            "datasets": [{"id": f"ds-{i % 13}", "hash": HASH}],
            "details": {"tool": "desktop", "image": "vre/desktop:1.4", "flavor": "small-gpu",
                        "workload_id": f"wl-{i}", "purpose": "desktop"}}


def make_config(home: Path, database_url: str | None, chain_url: str,
                contract: str) -> tuple[Config, TokenIssuer]:
    keys = home / "keys"
    generate_signing_key(keys / "issuer.pem")
    issuer = TokenIssuer.from_file(keys / "issuer.pem", "http://bench-issuer", "vre", 3600)
    (keys / "jwks.json").write_text(json.dumps(issuer.jwks()))
    CheckpointSigner.generate(keys / "tracer.pem")
    values: dict[str, object] = {
        "home": home, "tracer_port": free_port(), "token_issuer": "http://bench-issuer",
        "jwks_url": (keys / "jwks.json").as_uri(), "service_secret": "b" * 48,
        "tracer_key_file": keys / "tracer.pem", "log_level": "WARNING", "threads": 16,
        "chain_url": chain_url, "chain_contract": contract,
        "chain_private_key": ANVIL_DEV_PRIVATE_KEY, "max_body_bytes": 8 * 1024 * 1024,
    }
    if database_url:
        values.update(database_url=database_url,
                      database_schema_prefix=f"bench{os.getpid()}_")
    return load_config(env={}, **values), issuer


@contextlib.contextmanager
def process(name: str, argv: list[str], config: Config) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update(to_env(config))
    log = open(config.home / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"not ready: {url}")


def batched_rate(url: str, token: str, seconds: float, batch: int, clients: int,
                 keyed: bool = True) -> tuple[float, int]:
    """Traces/s acknowledged (201) by the batched API, several clients at once; `keyed`:
    each trace carries a fresh id, which the tracer looks up before it appends."""
    traces = [sample_trace(i) for i in range(batch)]
    plain = json.dumps(traces).encode()

    def body() -> bytes:
        if not keyed:
            return plain
        return json.dumps([{**t, "id": str(uuid.uuid4())} for t in traces]).encode()

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    acknowledged = [0] * clients
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        http = requests.Session()
        while time.monotonic() < stop_at:
            response = http.post(url + "/api/v1/traces", data=body(), headers=headers,
                                 timeout=60)
            if response.status_code != 201:
                raise SystemExit(f"POST failed: {response.status_code} {response.text[:200]}")
            acknowledged[k] += batch

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return sum(acknowledged) / elapsed, sum(acknowledged)


def per_trace_rate(url: str, token: str, chain: JsonRpcChainClient, count: int) -> float:
    """Traces/s when a trace is acknowledged only after its own chain transaction. One
    client: the contract takes leaves in order, as a per-trace ledger must."""
    tracer = TracerClient(url, StaticToken(token))
    started = time.monotonic()
    for i in range(count):
        stored = tracer.record(sample_trace(i))
        chain.anchor_leaf(stored["seq"], bytes.fromhex(stored["leaf_hash"]))
    return count / (time.monotonic() - started)


def proof_times(leaves: int, samples: int = 2000) -> tuple[float, float, float]:
    """(build seconds, mean ms, p99 ms) of inclusion proofs in a tree of `leaves` leaves."""
    rng = random.Random(1)
    hashes = [rng.randbytes(32) for _ in range(leaves)]
    started = time.perf_counter()
    tree = MerkleTree(hashes)
    build = time.perf_counter() - started
    timings = []
    root = tree.root()
    for _ in range(samples):
        index = rng.randrange(leaves)
        t0 = time.perf_counter()
        proof = tree.inclusion_proof(index)
        timings.append((time.perf_counter() - t0) * 1000)
        verify_inclusion(hashes[index], index, leaves, proof, root)
    timings.sort()
    return build, statistics.fmean(timings), timings[int(0.99 * len(timings)) - 1]


def api_proof_ms(url: str, token: str, trace_ids: list[str]) -> float:
    tracer = TracerClient(url, StaticToken(token))
    tracer.proof(trace_ids[0])
    started = time.perf_counter()
    for trace_id in trace_ids:
        tracer.proof(trace_id)
    return (time.perf_counter() - started) * 1000 / len(trace_ids)


def check_only_rate(tracer: TracerClient, chain: JsonRpcChainClient) -> float:
    """Leaves/s of the verification itself: positions, leaf hashes and every root."""
    expected = expected_roots(tracer, chain)
    entries = []
    while True:
        _, page = tracer.entries(len(entries), 20_000)
        entries += page
        if len(page) < 20_000:
            break
    started = time.perf_counter()
    verifier = LogVerifier(expected)
    for entry in entries:
        verifier.feed(entry.seq, entry.body, entry.leaf_hash)
    report = verifier.finish(len(entries))
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"verification failed: {report.divergence}")
    return report.leaves / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-trace", type=int, default=300)
    parser.add_argument("--proof-leaves", type=int, default=1_000_000)
    parser.add_argument("--database-url",
                        default="postgresql://postgres@127.0.0.1:5432/test",
                        help="'' for SQLite in the temporary data directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vre-bench-") as tmp, \
            running_anvil(free_port(), Path(tmp) / "anvil.json") as chain_url:
        home = Path(tmp)
        contract = JsonRpcChainClient(chain_url, ANVIL_DEV_PRIVATE_KEY).deploy()
        config, issuer = make_config(home, args.database_url or None, chain_url, contract)
        token = issuer.issue("service:bench", ["service"])[0]
        from launcher.local import migrate_all

        migrate_all(config)
        url = config.url_of("tracer")
        print(f"tracer on {url}, database "
              f"{'PostgreSQL' if args.database_url else 'SQLite'}, chain {chain_url}")
        try:
            with process("tracer", [sys.executable, "-m", "launcher", "serve", "tracer"], config), \
                    process("anchor", [sys.executable, "-m", "tracer", "worker"], config):
                wait_ready(url + "/readyz")
                plain, plain_total = batched_rate(url, token, args.seconds, args.batch,
                                                  args.clients, keyed=False)
                rate_a, total = batched_rate(url, token, args.seconds, args.batch, args.clients)
                print(f"(a) batched API, anchoring running, idempotency key checked on every "
                      f"trace: {rate_a:,.0f} traces/s ({total:,} traces in "
                      f"{args.seconds:.0f} s, batches of {args.batch}, {args.clients} clients; "
                      f"target >= 5,000)")
                print(f"(a0) same without keys: {plain:,.0f} traces/s ({plain_total:,} traces); "
                      f"with/without: {rate_a / plain:.2f}")
                writer = JsonRpcChainClient(chain_url, ANVIL_DEV_PRIVATE_KEY, contract)
                rate_b = per_trace_rate(url, token, writer, args.per_trace)
                print(f"(b) one chain transaction per trace: {rate_b:,.1f} traces/s "
                      f"({args.per_trace} traces, same node)")
                print(f"(c) ratio a/b: {rate_a / rate_b:,.0f}x (target >= 25x)")
                time.sleep(config.anchor_interval_seconds + 2)  # let the backlog anchor
                tracer = TracerClient(url, StaticToken(token))
                log_size, sample = tracer.entries(0, 200)
                ids = [json.loads(e.body)["id"] for e in sample]
                print(f"proof through the API at {log_size:,} traces: "
                      f"{api_proof_ms(url, token, ids):.2f} ms per request (HTTP included)")
                reader = JsonRpcChainClient(chain_url, ANVIL_DEV_PRIVATE_KEY, contract)
                started = time.perf_counter()
                report = run_verify(tracer, reader)
                elapsed = time.perf_counter() - started
                status = "OK" if report.ok else f"FAILED {report.divergence}"
                print(f"verify, end to end (export over HTTP from the database, then check): "
                      f"{report.leaves / elapsed:,.0f} leaves/s over {report.leaves:,} leaves, "
                      f"{report.roots_checked} roots, {status}")
                check_rate = check_only_rate(tracer, reader)
                print(f"verify, checking alone (entries already fetched): {check_rate:,.0f} "
                      f"leaves/s (target >= 100,000)")
        finally:
            if args.database_url:
                drop_schemas(args.database_url, config.database_schema_prefix)
    build, mean_ms, p99_ms = proof_times(args.proof_leaves)
    print(f"inclusion proof at {args.proof_leaves:,} leaves: mean {mean_ms:.3f} ms, "
          f"p99 {p99_ms:.3f} ms (target < 2 ms; tree built in {build:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
