"""Catalogue search latency on PostgreSQL: p50 and p95 of GET /api/v1/catalogue (the public
search of the dataset service, served as `vre serve dataset_service` serves it, over HTTP on
loopback, with its cache of answers off, so every search runs) for a realistic mix of
queries (full text, facet filters, sorts, deep-ish pages) over 10,000 published datasets
made of 200,000 studies, against GET /healthz on the same server in the same run (the cost
of a request that does nothing), with their ratio.

The studies, series, subjects and dataset memberships are bulk inserted (COPY); each
dataset's statistics are computed as `datasets.compute_statistics` computes them (checked
against it on a sample), its row is added through the ORM, and it is indexed by
`api_catalogue.index_dataset`, the very function publishing calls: the catalogue rows and
facets are exactly those 10,000 publish calls would leave, without their 10,000 traces.

Usage: .venv/bin/python bench/catalogue_search.py [--datasets 10000] [--studies 200000]
            [--queries 600] [--seed 7] [--database-url URL]
Needs the PostgreSQL on 127.0.0.1:5432 (or --database-url); its schemas are dropped after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from dataset_service import api_catalogue
from dataset_service import datasets as ds
from dataset_service.dicom import dataset_hash
from dataset_service.models import Dataset, DatasetStudy, Project, Series, Study, Subject
from dataset_service.search import backend_for
from launcher.local import service_env
from vre.config import Config, load_config
from vre.db import Database, bulk_insert, drop_schemas

SERVICE, MIGRATIONS = "dataset_service", "dataset_service:migrations"

# What the synthetic catalogue is about: (modality, body part) studies per diagnosis, and
# the words datasets are described with.
DIAGNOSES: dict[str, list[tuple[str, str]]] = {
    "lung nodule": [("CT", "CHEST")], "pneumonia": [("CT", "CHEST")],
    "covid-19": [("CT", "CHEST")], "emphysema": [("CT", "CHEST")],
    "liver lesion": [("CT", "ABDOMEN"), ("MR", "ABDOMEN")],
    "renal cyst": [("CT", "ABDOMEN")], "glioma": [("MR", "HEAD"), ("CT", "HEAD")],
    "stroke": [("CT", "HEAD"), ("MR", "HEAD")], "multiple sclerosis": [("MR", "HEAD")],
    "meniscal tear": [("MR", "KNEE")], "osteoarthritis": [("MR", "KNEE"), ("CR", "KNEE")],
    "prostate cancer": [("MR", "PELVIS")], "breast cancer": [("MG", "BREAST"), ("MR", "BREAST")],
    "healthy control": [("CT", "CHEST"), ("MR", "HEAD"), ("MR", "KNEE")],
}
MANUFACTURERS = {"CT": ["Acme Medical", "Northwind Imaging"], "MR": ["Acme Medical",
                 "Lumen Systems"], "CR": ["Radiant"], "MG": ["Radiant", "Lumen Systems"]}
ADJECTIVES = ["screening", "follow-up", "baseline", "longitudinal", "multicentre", "annotated",
              "contrast-enhanced", "low-dose", "paediatric", "retrospective", "prospective",
              "curated", "de-identified", "high-resolution", "external validation"]
EXTRAS = ["segmentation masks", "radiology reports", "bounding boxes", "expert annotations",
          "clinical outcomes", "histopathology labels", "survival data", "reader studies",
          "treatment response", "genomic markers"]
THEMES = ["Screening Consortium", "Neuro Imaging Network", "Musculoskeletal Registry",
          "Oncology Trials Group", "Emergency Radiology Study", "Population Cohort",
          "AI Validation Programme", "Rare Disease Initiative"]
LICENCES = ["CC-BY-4.0"] * 5 + ["CC-BY-NC-4.0"] * 3 + ["CC0-1.0"] * 2 + ["CC-BY-SA-4.0",
            "CC-BY-NC-SA-4.0", "ODbL-1.0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Plan:
    """The synthetic catalogue, drawn from a seed: rows ready for COPY, and the datasets."""

    projects: list[dict[str, Any]] = field(default_factory=list)
    subjects: list[dict[str, Any]] = field(default_factory=list)
    studies: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    study_ids: dict[str, list[str]] = field(default_factory=dict)  # dataset id -> its studies


def plan_catalogue(seed: int, n_datasets: int, n_studies: int, n_projects: int = 40) -> Plan:
    """Projects, then datasets, each of about n_studies / n_datasets studies of its own (of
    subjects of its project, mostly of its diagnosis), with series and statistics."""
    rng = random.Random(seed)
    plan = Plan()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for p in range(n_projects):
        plan.projects.append({"id": str(uuid.UUID(int=rng.getrandbits(128))),
                              "name": f"project-{p:02d}",
                              "title": f"{THEMES[p % len(THEMES)]} {p // len(THEMES) + 1}"})
    pools: dict[str, list[dict[str, Any]]] = {p["id"]: [] for p in plan.projects}
    per_dataset, extra = divmod(n_studies, n_datasets)
    for d in range(n_datasets):
        project = plan.projects[rng.randrange(n_projects)]
        diagnosis = rng.choice(sorted(DIAGNOSES))
        modality, body_part = rng.choice(DIAGNOSES[diagnosis])
        dataset_id = str(uuid.UUID(int=rng.getrandbits(128)))
        pool = pools[project["id"]]
        studies, series, subjects = [], [], {}
        for _ in range(per_dataset + (d < extra)):
            if pool and rng.random() < 0.6:  # a subject of the project seen before
                subject = rng.choice(pool)
            else:
                subject = {"id": str(uuid.UUID(int=rng.getrandbits(128))),
                           "project_id": project["id"], "pseudonym": f"S{len(plan.subjects):07d}",
                           "sex": rng.choice("FFMMO") if rng.random() < 0.97 else None,
                           "age": rng.randint(18, 90) if rng.random() < 0.95 else None,
                           "diagnosis": diagnosis if rng.random() < 0.9 else "healthy control",
                           "clinical": "{}"}
                plan.subjects.append(subject)
                pool.append(subject)
            subjects[subject["id"]] = subject
            mod, part = (modality, body_part) if rng.random() < 0.85 else rng.choice(
                DIAGNOSES[rng.choice(sorted(DIAGNOSES))])
            study_id = str(uuid.UUID(int=rng.getrandbits(128)))
            parts = []
            for number in range(1, rng.randint(1, 3) + 1):
                count = rng.randint(20, 300)
                parts.append({
                    "id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "series_uid": f"2.25.{rng.getrandbits(120)}", "study_id": study_id,
                    "modality": mod, "body_part": part,
                    "manufacturer": rng.choice(MANUFACTURERS[mod]), "model": "",
                    "description": "", "number": number, "instance_count": count,
                    "size_bytes": count * 526_000, "rows": 512, "columns": 512,
                    "slice_thickness": 1.0, "slice_spacing": 1.0, "pixel_spacing": "0.7\\0.7"})
            studies.append({
                "id": study_id, "study_uid": f"2.25.{rng.getrandbits(120)}",
                "subject_id": subject["id"], "project_id": project["id"],
                "study_date": (now - timedelta(days=rng.randrange(3000))).date(),
                "description": f"{mod} {part}", "modalities": mod, "body_parts": part,
                "series_count": len(parts), "instance_count": sum(s["instance_count"]
                                                                  for s in parts),
                "size_bytes": sum(s["size_bytes"] for s in parts),
                "content_hash": f"sha256:{rng.getrandbits(256):064x}",
                "ingest_id": "bench", "ingested_at": now})
            series += parts
        plan.studies += studies
        plan.series += series
        plan.study_ids[dataset_id] = [s["id"] for s in studies]
        published = now - timedelta(minutes=rng.randrange(3 * 365 * 24 * 60))
        licence = rng.choice(LICENCES)
        adjective, extra_words = rng.choice(ADJECTIVES), rng.sample(EXTRAS, 2)
        plan.datasets.append({
            "id": dataset_id, "project_id": project["id"],
            "name": f"{body_part.title()} {modality} {diagnosis} {adjective} cohort {d}",
            "description": (f"{len(studies)} {modality} studies of the {body_part.lower()} from "
                            f"the {project['title']}: {diagnosis}, {adjective}, with "
                            f"{extra_words[0]} and {extra_words[1]}."),
            "version": "1.0", "state": "published", "license_id": licence,
            "license_url": ds.KNOWN_LICENSES[licence], "contact_name": "Data Steward",
            "contact_email": "steward@example.org",
            "authors": [{"name": f"Author {rng.randrange(500)}"}],
            "keywords": [diagnosis, modality, body_part.lower(), *rng.sample(ADJECTIVES, 2)],
            "purpose": "", "provenance": "", "public_use": rng.random() < 0.3,
            "content_hash": dataset_hash(s["content_hash"] for s in studies),
            "statistics": statistics_of(studies, series, list(subjects.values())),
            "created_by": "steward-1", "created_at": published - timedelta(days=2),
            "modified_at": published, "released_at": published - timedelta(days=1),
            "published_at": published})
    return plan


def statistics_of(studies: list[dict[str, Any]], series: list[dict[str, Any]],
                  subjects: list[dict[str, Any]]) -> dict[str, Any]:
    """What `datasets.compute_statistics` gives for these rows (checked on a sample)."""
    ages = [s["age"] for s in subjects if s["age"] is not None]
    bins = Counter((a // ds.AGE_BIN) * ds.AGE_BIN for a in ages)
    return {
        "subjects": len(subjects), "studies": len(studies), "series": len(series),
        "instances": sum(s["instance_count"] for s in series),
        "size_bytes": sum(s["size_bytes"] for s in series),
        "modalities": dict(Counter(s["modality"] for s in series if s["modality"])),
        "body_parts": dict(Counter(s["body_part"] for s in series if s["body_part"])),
        "manufacturers": dict(Counter(s["manufacturer"] for s in series if s["manufacturer"])),
        "sex": dict(Counter(s["sex"] or "unknown" for s in subjects)),
        "age_histogram": [[b, b + ds.AGE_BIN - 1, bins[b]] for b in sorted(bins)],
        "age_min": min(ages) if ages else None, "age_max": max(ages) if ages else None,
        "diagnoses": dict(Counter(s["diagnosis"] for s in subjects if s["diagnosis"])),
    }


def populate(db: Database, config: Config, plan: Plan) -> None:
    """Bulk rows, then each dataset through the ORM and the publish path's indexing."""
    with db.session() as session:
        session.add_all(Project(created_by="steward-1", **p) for p in plan.projects)
        session.flush()
        for model, rows in ((Subject, plan.subjects), (Study, plan.studies),
                            (Series, plan.series)):
            for start in range(0, len(rows), 50_000):
                bulk_insert(session, model.__table__, rows[start:start + 50_000])
    backend = backend_for(config.search_backend, config.elasticsearch_url)
    backend.prepare()
    for start in range(0, len(plan.datasets), 1000):
        chunk = plan.datasets[start:start + 1000]
        with db.session() as session:
            session.add_all(Dataset(**d) for d in chunk)
            session.flush()
            bulk_insert(session, DatasetStudy.__table__,
                        [m for d in chunk for m in ({"dataset_id": d["id"], "study_id": s}
                                                    for s in plan.study_ids[d["id"]])])
            for dataset in session.scalars(sa.select(Dataset).where(
                    Dataset.id.in_([d["id"] for d in chunk]))):
                api_catalogue.index_dataset(backend, session, dataset)
    with db.session() as session:  # the statistics are those the service computes
        rng = random.Random(0)
        for d in rng.sample(plan.datasets, min(25, len(plan.datasets))):
            real = ds.compute_statistics(session, plan.study_ids[d["id"]])
            if real != d["statistics"]:
                raise SystemExit(f"statistics differ from compute_statistics for {d['id']}")
        # Planner statistics as autovacuum would soon have them (this schema's tables only).
        session.execute(sa.text("ANALYZE catalogue, catalogue_facets, datasets, "
                                "dataset_studies, studies, series, subjects"))


@dataclass(frozen=True)
class Query:
    kind: str
    params: dict[str, Any]


def query_mix(rng: random.Random, n: int, projects: list[str]) -> list[Query]:
    """Searches as people make them: words and phrases (alone and with filters), filters
    alone under each sort, a project's datasets, deeper pages, the bare listing."""
    words = ["lung", "nodule", "glioma", "knee", "liver", "stroke", "screening", "cohort",
             "annotated", "segmentation", "covid-19", "pneumonia", "prostate", "follow-up",
             "emphysema", "reports", "mr", "contrast-enhanced", "paediatric", "survival"]
    texts = [*words, '"lung nodule"', '"segmentation masks"', "liver -contrast",
             "nodule or pneumonia", "brain glioma", "knee meniscal tear", "chest ct screening",
             "multicentre -healthy", "breast cancer mr", "multiple sclerosis"]
    facets = {"modality": ["CT", "MR", "MG", "CR"],
              "body_part": ["CHEST", "HEAD", "ABDOMEN", "KNEE", "PELVIS", "BREAST"],
              "license": sorted(set(LICENCES))}
    sorts = ["relevance", "newest", "name", "subjects"]
    queries = []
    for _ in range(n):
        kind = rng.choices(["text", "text+filter", "filters", "project", "deep page",
                            "listing"], weights=[30, 20, 20, 10, 15, 5])[0]
        params: dict[str, Any] = {}
        if kind in ("text", "text+filter"):
            params["q"] = rng.choice(texts)
            params["sort"] = rng.choice(["relevance"] * 3 + sorts)
        if kind in ("text+filter", "filters"):
            for facet in rng.sample(sorted(facets), rng.randint(1, 2)):
                params[facet] = rng.choice(facets[facet])
        if kind == "filters":
            params["sort"] = rng.choice(sorts)
        if kind == "project":
            params["project"] = rng.choice(projects)
            params["sort"] = rng.choice(sorts)
        if kind == "deep page":
            params["sort"] = rng.choice(sorts[1:])
            if rng.random() < 0.5:
                params["modality"] = rng.choice(["CT", "MR"])
            params["page"] = rng.randint(5, 50)
        if rng.random() < 0.2:
            params["per_page"] = rng.choice([50, 100])
        queries.append(Query(kind, params))
    return queries


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def make_config(home: Path, database_url: str) -> Config:
    return load_config(env={}, home=home, dataset_port=free_port(), service_secret="b" * 48,
                       log_level="WARNING", database_url=database_url,
                       database_schema_prefix=f"bench{os.getpid()}_{uuid.uuid4().hex[:6]}_")


@contextlib.contextmanager
def serving(config: Config, name: str = SERVICE) -> Iterator[str]:
    """A service as `vre serve` runs it; yields its base URL once it is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update(service_env(config, name))
    log = open(config.home / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "serve", name], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = config.url_of(name)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name} not ready; see {config.home}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def timed_get(http: requests.Session, url: str, params: dict[str, Any] | None = None
              ) -> tuple[float, Any]:
    started = time.perf_counter()
    response = http.get(url, params=params, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise SystemExit(f"GET {url} {params}: {response.status_code} {response.text[:300]}")
    return elapsed, response.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--studies", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=600, help="searches measured")
    parser.add_argument("--warmup", type=int, default=60, help="searches run first, unmeasured")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vre-bench-catalogue-") as tmp:
        config = make_config(Path(tmp), args.database_url)
        try:
            db = Database.for_service(config, SERVICE, MIGRATIONS)
            db.migrate(config, SERVICE)
            started = time.perf_counter()
            plan = plan_catalogue(args.seed, args.datasets, args.studies)
            planned = time.perf_counter() - started
            populate(db, config, plan)
            db.engine.dispose()
            print(f"{len(plan.datasets):,} published datasets, {len(plan.studies):,} studies, "
                  f"{len(plan.series):,} series, {len(plan.subjects):,} subjects on PostgreSQL "
                  f"(drawn in {planned:.1f} s, loaded and indexed in "
                  f"{time.perf_counter() - started - planned:.1f} s); {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f}")
            rng = random.Random(args.seed)
            queries = query_mix(rng, args.warmup + args.queries,
                                [p["title"] for p in plan.projects])
            # The search itself is measured: the service's cache of answers stays off.
            with serving(config.model_copy(update={"catalogue_cache_seconds": 0})) as url:
                http = requests.Session()
                search, health = url + "/api/v1/catalogue", url + "/healthz"
                for query in queries[:args.warmup]:
                    timed_get(http, search, query.params)
                    timed_get(http, health)
                by_kind: dict[str, list[float]] = {}
                searches, healthz, hits = [], [], []
                slowest: list[tuple[float, Query]] = []
                for query in queries[args.warmup:]:
                    # Interleaved, so that both see the same moments of a shared machine.
                    healthz.append(timed_get(http, health)[0])
                    elapsed, page = timed_get(http, search, query.params)
                    searches.append(elapsed)
                    hits.append(page["total"])
                    by_kind.setdefault(query.kind, []).append(elapsed)
                    slowest = sorted([*slowest, (elapsed, query)], key=lambda e: -e[0])[:3]
            print(f"{'GET /api/v1/catalogue':34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
            for kind, values in sorted(by_kind.items()):
                print(f"  {kind:32} {len(values):5} {statistics.median(values):8.1f} "
                      f"{percentile(values, 95):8.1f}")
            p50, p95 = statistics.median(searches), percentile(searches, 95)
            h50, h95 = statistics.median(healthz), percentile(healthz, 95)
            print(f"  {'all searches (the mix)':32} {len(searches):5} {p50:8.1f} {p95:8.1f}"
                  f"  (target p95 < 50 ms)")
            print(f"{'GET /healthz (baseline)':34} {len(healthz):5} {h50:8.1f} {h95:8.1f}")
            print(f"ratio search/healthz: p50 {p50 / h50:.1f}x, p95 {p95 / h95:.1f}x; median "
                  f"{statistics.median(hits):,.0f} matches a search (0 in "
                  f"{sum(1 for h in hits if h == 0)}); load average "
                  f"{os.getloadavg()[0]:.2f} after")
            for elapsed, query in slowest:
                print(f"  slowest: {elapsed:6.1f} ms  {query.kind}: {query.params}")
        finally:
            drop_schemas(args.database_url, config.database_schema_prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
