"""Portal page throughput and latency: requests per second and p50/p95 of the public catalogue
page and of dataset landing pages, with 10,000 published datasets (PostgreSQL), from a bounded
load generator on loopback (a fixed number of clients, each sending its next request when the
last one answered), against the portal's GET /healthz under the same load in the same run.

The portal and the dataset service run as `vre serve` runs them (gunicorn, real HTTP); the
catalogue is populated by bench/catalogue_search.py's populate (the rows and search index
10,000 publish calls would leave). Catalogue requests mix free text, facet filters, sorts and
pages; landing requests pick datasets at random.

Each page is measured twice: rendered for every request (the page cache off, as for signed-in
visitors) and as anonymous visitors get it (public pages kept for VRE_PAGE_CACHE_SECONDS).

Usage: .venv/bin/python bench/portal_pages.py [--datasets 10000] [--studies 200000]
            [--clients 20] [--seconds 15] [--database-url URL]
Needs the PostgreSQL on 127.0.0.1:5432 (or --database-url); its schemas are dropped after.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from catalogue_search import (
    free_port,
    make_config,
    percentile,
    plan_catalogue,
    populate,
    query_mix,
    serving,
)

from vre import local
from vre.db import Database, drop_schemas
from vre.services import service

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def load(url_of: Callable[[random.Random], str], clients: int, seconds: float,
         seed: int) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of `clients` closed-loop clients."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    failures: list[str] = []

    def client(i: int) -> None:
        # http.client, not requests: the generator shares the cores with the servers, so it
        # should spend as little of them as it can.
        rng = random.Random(seed * 1000 + i)
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < stop:
            url = urlsplit(url_of(rng))
            if connection is None:
                connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            started = time.perf_counter()
            connection.request("GET", url.path + ("?" + url.query if url.query else ""))
            response = connection.getresponse()
            response.read()
            latencies[i].append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                failures.append(f"{url.geturl()}: {response.status}")
                return
            if response.will_close:
                connection.close()
                connection = None

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    if failures:
        raise SystemExit(f"requests failed: {failures[:3]}")
    flat = [x for per in latencies for x in per]
    return len(flat) / elapsed, flat


def pages(portal: str, ids: list[str], queries: list[Any]
          ) -> dict[str, Callable[[random.Random], str]]:
    """What the clients ask for: the baseline, catalogue searches, landing pages."""
    def catalogue(rng: random.Random) -> str:
        query = rng.choice(queries)
        return f"{portal}/catalogue?" + urlencode(
            {k: v for k, v in query.params.items() if k != "per_page"})

    def landing(rng: random.Random) -> str:
        return f"{portal}/datasets/{rng.choice(ids)}"

    return {"healthz (baseline)": lambda _: f"{portal}/healthz",
            "catalogue page": catalogue, "landing page": landing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--studies", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1,
                        help="portal processes (VRE_WORKERS)")
    parser.add_argument("--database-url", default=DEFAULT_DB)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vre-bench-portal-") as tmp:
        config = make_config(Path(tmp), args.database_url)
        config = local.ensure_secrets(config.model_copy(update={
            "portal_port": free_port(), "tracer_port": free_port(), "demo_data": False}))
        prefix = config.database_schema_prefix
        try:
            print(f"populating {args.datasets:,} published datasets of {args.studies:,} studies "
                  "...", flush=True)
            started = time.monotonic()
            dataset_service = service("dataset_service")
            db = Database.for_service(config, dataset_service.name, dataset_service.migrations)
            db.migrate(config, dataset_service.name)
            plan = plan_catalogue(args.seed, args.datasets, args.studies)
            populate(db, config, plan)
            with db.session() as session:
                ids = list(session.scalars(sa.text(
                    "SELECT id FROM datasets WHERE state = 'published'")))
            db.engine.dispose()
            portal_db = Database.for_service(config, "portal", service("portal").migrations)
            portal_db.migrate(config, "portal")
            portal_db.engine.dispose()
            print(f"  done in {time.monotonic() - started:.0f} s; {len(ids):,} published")

            queries = query_mix(random.Random(args.seed), 400,
                                [p["title"] for p in plan.projects])
            results = {}
            for cached in (False, True):
                portal_config = config.model_copy(update={
                    "page_cache_seconds": 60 if cached else 0})
                with serving(portal_config, "dataset_service"), \
                        serving(portal_config.model_copy(update={"workers": args.workers}),
                                "portal") as portal:
                    paths = pages(portal, ids, queries)
                    # warm connections and the process before measuring
                    for url_of in paths.values():
                        load(url_of, 4, 2, args.seed)
                    suffix = " (cached)" if cached else ""
                    for name, url_of in paths.items():
                        if cached and name.startswith("healthz"):
                            continue
                        results[name + suffix] = load(url_of, args.clients, args.seconds,
                                                      args.seed)
        finally:
            drop_schemas(args.database_url, prefix)

    _, base_lat = results["healthz (baseline)"]
    print(f"\n{args.clients} concurrent clients, {args.seconds:g} s each, "
          f"{args.datasets:,} published datasets")
    print(f"{'path':<22}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p95 / baseline':>16}")
    for name, (rps, lat) in results.items():
        print(f"{name:<22}{rps:>9.0f}{percentile(lat, 50):>9.1f}{percentile(lat, 95):>9.1f}"
              f"{percentile(lat, 95) / percentile(base_lat, 95):>15.1f}x")
    for suffix in ("", " (cached)"):
        worst = max(percentile(results[n + suffix][1], 95)
                    for n in ("catalogue page", "landing page"))
        print(f"p95 of the slower page{suffix or ' (rendered each time)'}: {worst:.1f} ms "
              f"(target < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
