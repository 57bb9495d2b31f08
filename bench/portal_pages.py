"""Portal page throughput and latency: requests per second and p50/p95 of the public catalogue
page and of dataset landing pages, with 10,000 published datasets (PostgreSQL), from a bounded
load generator on loopback (a fixed number of clients, each sending its next request when the
last one answered), against the portal's GET /healthz under the same load in the same run.
Before each measurement every search of the catalogue mix and every landing page is asked
once: a live catalogue has been asked them before, and the dataset service keeps searches
and published records until the catalogue changes; the lines "nothing kept" show both pages
with every search run and every record read in PostgreSQL.

The portal and the dataset service run as `vre serve` runs them (Granian, real HTTP); the
catalogue is populated by bench/catalogue_search.py's populate (the rows and search index
10,000 publish calls would leave). Catalogue requests mix free text, facet filters, sorts and
pages; landing requests pick datasets at random.

Each page is measured in three runs, interleaved with the other pages (a burst of load from
elsewhere on a shared machine then spoils one run, not all); the run with the median p95 is
shown, with every run's p95 beside it. Pages are measured made for every request (the page
cache off, as for signed-in visitors: each request asks the dataset service, which answers
304 while the answer the portal drew its kept part from holds), as anonymous visitors get
them (whole public pages kept for VRE_PAGE_CACHE_SECONDS), and once more with the dataset
service keeping nothing, so it names nothing and every page is drawn afresh
(VRE_CATALOGUE_CACHE_SECONDS=0).

Usage: .venv/bin/python bench/portal_pages.py [--datasets 10000] [--studies 200000]
            [--clients 20] [--seconds 10] [--rounds 3] [--database-url URL]
Needs the PostgreSQL on 127.0.0.1:5432 (or --database-url); its schemas are dropped after.
"""

from __future__ import annotations

import argparse
import random
import selectors
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

from launcher import local
from vre.db import Database, drop_schemas
from vre.services import service

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class _Client:
    """One closed-loop client: a keep-alive connection and the request it waits on."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.started = 0.0
        self.url = ""
        self.latencies: list[float] = []


def _response_end(buffer: bytearray) -> tuple[int, int, bool] | None:
    """(status, where the body ends, server closes) once a whole response is in `buffer`."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    if "content-length" not in headers:
        raise SystemExit(f"response without Content-Length: {lines[0]}")
    end = head_end + 4 + int(headers["content-length"])
    if len(buffer) < end:
        return None
    return int(lines[0].split()[1]), end, headers.get("connection") == "close"


def load(url_of: Callable[[random.Random], str], clients: int, seconds: float,
         seed: int) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of `clients` closed-loop clients, each sending
    its next request when the last one answered. One thread drives them all over
    non-blocking sockets: the generator shares the cores with the servers, so it spends as
    little of them as it can (20 threads of http.client cost the servers a sixth of them)."""
    target = urlsplit(url_of(random.Random(seed)))
    selector = selectors.DefaultSelector()
    everyone = [_Client(random.Random(seed * 1000 + i)) for i in range(clients)]
    stop = time.monotonic() + seconds

    def send(client: _Client) -> None:
        url = urlsplit(url_of(client.rng))
        if client.sock is None:
            client.sock = socket.create_connection((target.hostname, target.port), timeout=30)
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.sock.setblocking(False)
            selector.register(client.sock, selectors.EVENT_READ, client)
        client.url = url.geturl()
        client.buffer.clear()
        client.started = time.perf_counter()
        path = url.path + ("?" + url.query if url.query else "")
        client.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {target.netloc}\r\n\r\n"
                            .encode())  # a few hundred bytes: an empty send buffer takes them

    began = time.monotonic()
    for client in everyone:
        send(client)
    waiting = clients
    while waiting:
        events = selector.select(timeout=30)
        if not events:
            raise SystemExit("no answer for 30 s")
        for key, _ in events:
            client: _Client = key.data
            data = client.sock.recv(1 << 16)  # type: ignore[union-attr]
            if not data:
                raise SystemExit(f"{client.url}: connection closed before an answer")
            client.buffer += data
            done = _response_end(client.buffer)
            if done is None:
                continue
            status, end, closes = done
            client.latencies.append((time.perf_counter() - client.started) * 1000)
            if status != 200:
                raise SystemExit(f"request failed: {client.url}: {status}")
            if end != len(client.buffer):
                raise SystemExit(f"{client.url}: bytes after the answer")
            if closes or time.monotonic() >= stop:
                selector.unregister(client.sock)
                client.sock.close()  # type: ignore[union-attr]
                client.sock = None
            if time.monotonic() < stop:
                send(client)
            else:
                waiting -= 1
    elapsed = time.monotonic() - began
    selector.close()
    flat = [x for c in everyone for x in c.latencies]
    return len(flat) / elapsed, flat


def median_run(runs: list[tuple[float, list[float]]]) -> tuple[float, list[float]]:
    """Of several runs of one page, the one whose p95 is the median."""
    ordered = sorted(runs, key=lambda run: percentile(run[1], 95))
    return ordered[(len(ordered) - 1) // 2]


def catalogue_urls(portal: str, queries: list[Any]) -> list[str]:
    """The catalogue page of each search of the mix."""
    return [f"{portal}/catalogue?" + urlencode(
        {k: v for k, v in query.params.items() if k != "per_page"}) for query in queries]


def ask_once(urls: list[str], parallel: int = 8) -> None:
    """GET each distinct URL once, `parallel` at a time."""
    def get(url: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as answer:
            answer.read()

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(get, dict.fromkeys(urls)))


def pages(portal: str, ids: list[str], queries: list[Any]
          ) -> dict[str, Callable[[random.Random], str]]:
    """What the clients ask for: the baseline, catalogue searches, landing pages."""
    searches = catalogue_urls(portal, queries)

    def catalogue(rng: random.Random) -> str:
        return rng.choice(searches)

    def landing(rng: random.Random) -> str:
        return f"{portal}/datasets/{rng.choice(ids)}"

    return {"healthz (baseline)": lambda _: f"{portal}/healthz",
            "catalogue page": catalogue, "landing page": landing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--studies", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each page; the one with the median p95 is shown")
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
            results: dict[str, list[tuple[float, list[float]]]] = {}
            # (suffix, settings that differ from the defaults, pages measured)
            modes: list[tuple[str, dict[str, int], tuple[str, ...]]] = [
                ("", {"page_cache_seconds": 0},
                 ("healthz (baseline)", "catalogue page", "landing page")),
                (" (nothing kept)", {"page_cache_seconds": 0, "catalogue_cache_seconds": 0},
                 ("catalogue page", "landing page")),
                (" (cached)", {}, ("catalogue page", "landing page"))]
            for suffix, settings, measured in modes:
                mode_config = config.model_copy(update=settings)
                with serving(mode_config, "dataset_service"), \
                        serving(mode_config.model_copy(update={"workers": args.workers}),
                                "portal") as portal:
                    paths = pages(portal, ids, queries)
                    # warm connections and the process before measuring; the searches of
                    # the mix and the landing pages are asked once, as a live catalogue has
                    # been asked them before
                    for url_of in paths.values():
                        load(url_of, 4, 2, args.seed)
                    ask_once(catalogue_urls(portal, queries))
                    if "landing page" in measured and mode_config.catalogue_cache_seconds:
                        ask_once([f"{portal}/datasets/{i}" for i in ids])
                    # rounds interleave the pages, so a burst of load from elsewhere on a
                    # shared machine lands on one run of a page, not on all of them
                    for round_no in range(args.rounds):
                        for name in measured:
                            results.setdefault(name + suffix, []).append(load(
                                paths[name], args.clients, args.seconds,
                                args.seed + round_no))
        finally:
            drop_schemas(args.database_url, prefix)

    typical = {name: median_run(runs) for name, runs in results.items()}
    base_p95 = percentile(typical["healthz (baseline)"][1], 95)
    print(f"\n{args.clients} concurrent clients, {args.rounds} runs of {args.seconds:g} s "
          f"per page, {args.datasets:,} published datasets; the run with the median p95:")
    print(f"{'path':<36}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p95 / baseline':>16}"
          f"{'p95 of every run':>24}")
    for name, (rps, lat) in typical.items():
        every = " ".join(f"{percentile(r[1], 95):.0f}" for r in results[name])
        print(f"{name:<36}{rps:>8.0f}{percentile(lat, 50):>8.1f}{percentile(lat, 95):>8.1f}"
              f"{percentile(lat, 95) / base_p95:>15.1f}x{every:>24}")
    for suffix, label in (("", "made for every request"), (" (cached)", "anonymous visitors")):
        worst = max(percentile(typical[n + suffix][1], 95)
                    for n in ("catalogue page", "landing page"))
        print(f"p95 of the slower page ({label}): {worst:.1f} ms (target < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
