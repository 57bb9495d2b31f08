"""Batch jobs through a running `vre up` (Granian-served portal and dataset service, the
compute agent with its real LocalBackend, PostgreSQL by default), three figures each against a
baseline measured in the same run:

1. simple submissions accepted per second through POST /api/v1/jobs from loopback (target:
   500/s, the simple submissions Slurm's controller is validated at), against GET
   /api/v1/me (the bare authenticated request path) through the same server, both from the
   same keep-alive client threads (64, and the services serving 64 request threads each,
   VRE_THREADS, as a site taking submissions from many desktops at once runs them:
   submissions arriving together are recorded in one transaction, so how many may be in
   flight at once is the figure's lever). Then as many submissions that each name a dataset
   (each gets its own grant from the dataset service, traced), against the same baseline.
   One job holding the whole job pool (VRE_JOB_CPUS = the no-gpu flavor's 2 CPUs) runs
   meanwhile, so every submission waits in the queue and none starts: the agent still plans
   the queue as submissions poke it, as it does on a full cluster. Each part of the
   platform's CPU time a request is printed too (portal, dataset service, tracer, agent,
   PostgreSQL, the clients), with the rate the machine's cores would allow at that cost.
2. submit-to-running p50 and p95 of a trivial job (`sleep 30`) on an empty queue (target: p50
   under 1 s), read from the job's own record (started_at - submitted_at, both set by the
   platform), each cancelled once running; against a bare start of the same command in the
   same sandbox shape (`LocalBackend.start` on a spec, in this process).
3. `vre-job queue` p50 and p95 with 10,000 jobs queued (the API's and bulk-inserted rows
   shaped like the API's, the agent planning over all of them), run as a command (its own
   process, --portal and --token) for a user with 200 of them; against `vre-job flavors`,
   the same process start and HTTP path with a trivial answer.

    .venv/bin/python bench/jobs.py [--submissions 2000] [--clients 64] [--threads 64]
            [--starts 20] [--queued 10000] [--runs 20] [--database-url URL ('' for SQLite)]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from portal.compute import Resources, WorkloadSpec
from portal.compute.local import LocalBackend
from portal.models import Workload
from tests.platform import platform_env, start_vre_up, stop_vre_up
from vre.config import Config, load_config
from vre.db import Database, drop_schemas
from vre.services import service

ADMIN_PASSWORD = "bench-admin-password"
USER_PASSWORD = "bench-user-password-1"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
FLAVOR = "no-gpu"  # 2 CPUs: with VRE_JOB_CPUS=2 one job fills the pool


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Platform:
    """`vre up` with the demo data in a scratch data directory, on free ports, its database
    in schemas of its own (dropped by the caller)."""

    def __init__(self, workdir: Path, database_url: str, threads: int) -> None:
        env = platform_env(workdir, ADMIN_PASSWORD, VRE_JOB_CPUS="2", VRE_THREADS=str(threads))
        if database_url:
            env.update(VRE_DATABASE_URL=database_url,
                       VRE_DATABASE_SCHEMA_PREFIX=f"benchjobs{os.getpid()}_")
        self.env = env
        self.config: Config = load_config(env=env)
        self.portal = f"http://127.0.0.1:{env['VRE_PORTAL_PORT']}"
        self.datasets = f"http://127.0.0.1:{env['VRE_DATASET_PORT']}"
        try:
            self.process, self.log = start_vre_up(env, workdir, seconds=600)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        self.admin = self.token("admin", ADMIN_PASSWORD)

    def token(self, username: str, password: str) -> str:
        answer = requests.post(self.portal + "/api/v1/tokens", timeout=30, json={
            "grant_type": "password", "username": username, "password": password})
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def call(self, token: str, method: str, path: str, **body: Any) -> dict[str, Any]:
        answer = requests.request(method, self.portal + path, timeout=60, json=body or None,
                                  headers={"Authorization": "Bearer " + token})
        if not answer.ok:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return dict(answer.json())

    def researcher(self, username: str, max_jobs: int) -> tuple[str, str]:
        """A researcher account with room for `max_jobs` jobs: its token and subject."""
        self.call(self.admin, "POST", "/api/v1/users", username=username,
                  display_name=username, email=f"{username}@example.org",
                  roles=["researcher"], password=USER_PASSWORD)
        token = self.token(username, USER_PASSWORD)
        subject = self.call(token, "GET", "/api/v1/me")["subject"]
        self.call(self.admin, "POST", "/api/v1/quotas", scope="user", subject=subject,
                  max_jobs=max_jobs)
        return token, subject

    def stop(self) -> None:
        stop_vre_up(self.process)


@contextlib.contextmanager
def running_platform(workdir: Path, database_url: str, threads: int) -> Iterator[Platform]:
    platform = Platform(workdir, database_url, threads)
    try:
        yield platform
    finally:
        platform.stop()


# -- 1. submissions per second ---------------------------------------------------------------

def hammer(portal: str, requests_of: list[list[tuple[str, str, bytes | None, str]]]
           ) -> tuple[float, int]:
    """Send each client's (method, path, body, token) list over its own keep-alive
    connection, the clients in parallel threads; (requests per second, failures)."""
    where = urlsplit(portal)
    failures = [0] * len(requests_of)
    ready = threading.Barrier(len(requests_of) + 1)

    def client(n: int) -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        connection.connect()
        ready.wait()
        for method, path, body, token in requests_of[n]:
            headers = {"Authorization": "Bearer " + token}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status not in (200, 201):
                failures[n] += 1
                if failures[n] == 1:
                    print(f"  {method} {path}: {answer.status}", file=sys.stderr)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(requests_of))]
    for thread in threads:
        thread.start()
    ready.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    total = sum(len(r) for r in requests_of)
    return total / (time.perf_counter() - began), sum(failures)


def _processes() -> dict[int, tuple[int, str, str, float]]:
    """Every process: pid -> (parent pid, name, command line, CPU seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        fields = rest.split()
        found[int(pid)] = (int(fields[1]), name,
                           " ".join(a.decode(errors="replace") for a in argv),
                           (int(fields[11]) + int(fields[12])) / tick)
    return found


def _part_of(pid: int, processes: dict[int, tuple[int, str, str, float]],
             root: int) -> str | None:
    """Which part of the platform a process is (by its command line), None for none: those
    under `vre up`, the PostgreSQL server's, and this process (the clients)."""
    parent, name, words, _ = processes[pid]
    if pid == os.getpid():
        return "bench clients"
    if name.startswith("postgres"):
        return "PostgreSQL"
    while parent not in (root, 0, 1) and parent in processes:
        parent = processes[parent][0]
    if parent != root:
        return None
    for needle, part in (("serve portal", "portal"), ("serve dataset_service", "dataset service"),
                         ("serve tracer", "tracer"), ("tracer worker", "tracer"),
                         ("compute.agent", "compute agent")):
        if needle in words:
            return part
    return "other"


def cpu_by_part(root: int) -> dict[str, float]:
    """CPU seconds used so far by each part of the platform (live processes only: take two
    readings around the work and subtract)."""
    processes = _processes()
    used: dict[str, float] = {}
    for pid, (_, _, _, seconds) in processes.items():
        part = _part_of(pid, processes, root)
        if part is not None:
            used[part] = used.get(part, 0.0) + seconds
    return used


def measured(portal: str, root: int, requests_of: list[list[tuple[str, str, bytes | None,
                                                                   str]]]
             ) -> tuple[float, int, dict[str, float]]:
    """`hammer`, with the CPU milliseconds each part of the platform spent per request."""
    before = cpu_by_part(root)
    rate, failures = hammer(portal, requests_of)
    after = cpu_by_part(root)
    total = sum(len(r) for r in requests_of)
    return rate, failures, {part: (after[part] - before.get(part, 0.0)) * 1000 / total
                            for part in after}


def cpu_line(per_request: dict[str, float]) -> str:
    total = sum(per_request.values())
    parts = ", ".join(f"{part} {ms:.1f}" for part, ms in
                      sorted(per_request.items(), key=lambda kv: -kv[1]) if ms >= 0.05)
    return f"{total:.1f} ms CPU a request ({parts})"


def submission(dataset_id: str | None) -> bytes:
    body: dict[str, Any] = {"command": ["true"], "flavor": FLAVOR,
                            "idempotency_key": uuid.uuid4().hex}
    if dataset_id:
        body["datasets"] = [dataset_id]
    return json.dumps(body).encode()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[n::parts] for n in range(parts)]


# -- 2. submit to running --------------------------------------------------------------------

def wait_state(platform: Platform, token: str, job_id: str, states: tuple[str, ...],
               seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job = platform.call(token, "GET", f"/api/v1/jobs/{job_id}")
        if job["state"] in states:
            return job
        if job["state"] in ("failed", "succeeded", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} is {job['state']} ({job['reason']})")
        time.sleep(0.005)


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def bare_start(backend: LocalBackend, owner: str, command: list[str]) -> float:
    """The same command in the same sandbox shape, started by the backend directly."""
    spec = WorkloadSpec(workload_id="bare" + uuid.uuid4().hex[:12], owner=owner, kind="job",
                        application="pytorch", command=tuple(command),
                        resources=Resources(cpus=2, memory_mib=4096, gpus=0,
                                            max_runtime_seconds=600))
    began = time.perf_counter()
    backend.start(spec)
    elapsed = time.perf_counter() - began
    backend.stop(spec.workload_id, now=True)
    deadline = time.monotonic() + 30
    while backend.poll(spec.workload_id) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return elapsed


# -- 3. vre-job queue ------------------------------------------------------------------------

def queue_rows(model: Workload, owners: list[str], per_owner: int, now: datetime
               ) -> list[dict[str, Any]]:
    """Queued job rows shaped like the one the API made (`model`), for each owner."""
    rows = []
    for owner in owners:
        for n in range(per_owner):
            job_id = "j" + uuid.uuid4().hex[:16]
            rows.append({
                "id": job_id, "owner_id": owner, "kind": "job",
                "application": model.application, "flavor": model.flavor, "state": "queued",
                "reason": "", "datasets": [], "grant_id": None,
                "spec": {**model.spec, "workload_id": job_id, "owner": owner},
                "backend_state": {}, "cpu_seconds": 0.0, "memory_peak_bytes": 0,
                "name": f"bulk-{n}", "parent_id": None, "depends_on": [],
                "idempotency_key": uuid.uuid4().hex, "time_limit_seconds":
                model.time_limit_seconds, "gpu_ids": [],
                "created_at": now - timedelta(seconds=len(rows) * 0.01)})
    return rows


def command_times(argv: list[str], runs: int) -> list[float]:
    """Seconds each run takes, start to exit (one warm-up run first, not counted)."""
    times = []
    for n in range(runs + 1):
        began = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[-1:])}: {done.returncode} {done.stderr[-500:]}")
        if n:
            times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--threads", type=int, default=64, help="request threads of each "
                        "service process (VRE_THREADS)")
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--mine", type=int, default=200, help="queued jobs of the user "
                        "running vre-job queue")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    args = parser.parse_args()
    if not shutil.which("bwrap"):
        raise SystemExit("bwrap is needed (scripts/setup.sh installs it)")
    vre_job = shutil.which("vre-job", path=str(Path(sys.executable).parent))
    vre_job_argv = [vre_job] if vre_job else [sys.executable, "-m", "batch_tools.cli"]
    rows: list[tuple[str, float, float, str, str]] = []  # figure, value, baseline, unit, target
    with tempfile.TemporaryDirectory(prefix="vre-bench-jobs-") as scratch:
        try:
            with running_platform(Path(scratch), args.database_url, args.threads) as platform:
                database = "PostgreSQL" if args.database_url else "SQLite"
                print(f"vre up on {database}, {os.cpu_count()} cores, job pool 2 CPUs "
                      f"(one {FLAVOR} job at a time)", flush=True)
                run_figures(platform, args, vre_job_argv, rows)
        finally:
            if args.database_url:
                drop_schemas(args.database_url, platform_prefix())
    print(f"\n{'figure':<44}{'value':>12}{'baseline':>12}{'ratio':>8}  target")
    for figure, value, baseline, unit, target in rows:
        print(f"{figure:<44}{value:>9.1f} {unit:<2}{baseline:>9.1f} {unit:<2}"
              f"{value / baseline:>7.2f}x  {target}")


def platform_prefix() -> str:
    return f"benchjobs{os.getpid()}_"


def run_figures(platform: Platform, args: argparse.Namespace, vre_job: list[str],
                rows: list[tuple[str, float, float, str, str]]) -> None:
    found = requests.get(platform.datasets + "/api/v1/catalogue?q=knee", timeout=30).json()
    dataset_id = found["results"][0]["id"]
    admin_subject = platform.call(platform.admin, "GET", "/api/v1/me")["subject"]
    platform.call(platform.admin, "POST", "/api/v1/quotas", scope="user",
                  subject=admin_subject, max_jobs=100_000)
    researcher, researcher_subject = platform.researcher("bench-researcher", 100_000)
    queuer, queuer_subject = platform.researcher("bench-queue", 100_000)

    # 2. submit to running, on an empty queue (first: it needs the pool free)
    backend = LocalBackend(platform.config)
    command = ["sleep", "30"]
    to_running, bare = [], []
    for n in range(args.starts + 1):  # interleaved; the first of each is a warm-up
        bare_seconds = bare_start(backend, researcher_subject, command)
        job = platform.call(researcher, "POST", "/api/v1/jobs", command=command,
                            flavor=FLAVOR)
        job = wait_state(platform, researcher, job["id"], ("running",))
        if n:
            bare.append(bare_seconds)
            to_running.append(seconds_between(job["submitted_at"], job["started_at"]))
        platform.call(researcher, "POST", f"/api/v1/jobs/{job['id']}/cancel")
        wait_state(platform, researcher, job["id"], ("cancelled",))
    print(f"submit to running ({args.starts} jobs, {' '.join(command)}): p50 "
          f"{statistics.median(to_running) * 1000:.0f} ms, p95 "
          f"{percentile(to_running, 0.95) * 1000:.0f} ms; bare LocalBackend.start p50 "
          f"{statistics.median(bare) * 1000:.0f} ms, p95 {percentile(bare, 0.95) * 1000:.0f} ms",
          flush=True)
    rows.append(("submit to running p50", statistics.median(to_running) * 1000,
                 statistics.median(bare) * 1000, "ms", "p50 < 1000 ms"))
    rows.append(("submit to running p95", percentile(to_running, 0.95) * 1000,
                 percentile(bare, 0.95) * 1000, "ms", ""))

    # 1. submissions per second, behind one job holding the pool
    blocker = platform.call(researcher, "POST", "/api/v1/jobs", command=["sleep", "3600"],
                            flavor=FLAVOR)
    wait_state(platform, researcher, blocker["id"], ("running",))
    plain = [("POST", "/api/v1/jobs", submission(None), researcher)
             for _ in range(args.submissions)]
    with_data = [("POST", "/api/v1/jobs", submission(dataset_id), platform.admin)
                 for _ in range(args.submissions)]
    bare_gets = [("GET", "/api/v1/me", None, researcher)] * args.submissions
    hammer(platform.portal, split(bare_gets[:200], args.clients))  # warm the workers
    group = platform.process.pid  # every part of the platform runs under vre up
    me_rate, me_failed, me_cpu = measured(platform.portal, group, split(bare_gets, args.clients))
    plain_rate, plain_failed, plain_cpu = measured(platform.portal, group,
                                                   split(plain, args.clients))
    data_rate, data_failed, data_cpu = measured(platform.portal, group,
                                                split(with_data, args.clients))
    me_rate_after, _ = hammer(platform.portal, split(bare_gets, args.clients))
    if plain_failed or data_failed or me_failed:
        raise SystemExit(f"{plain_failed + data_failed} submissions and {me_failed} GETs "
                         "failed")
    cores = os.cpu_count() or 1
    print(f"submissions: {args.submissions} simple, then {args.submissions} with dataset "
          f"{dataset_id}; {args.clients} keep-alive clients, {args.threads} request threads "
          f"a service; GET /api/v1/me {me_rate:.0f}/s before, {me_rate_after:.0f}/s after",
          flush=True)
    print(f"  simple at {plain_rate:.0f}/s: {cpu_line(plain_cpu)}", flush=True)
    print(f"  with a dataset at {data_rate:.0f}/s: {cpu_line(data_cpu)}", flush=True)
    print(f"  GET /api/v1/me: {cpu_line(me_cpu)}", flush=True)
    print(f"  on {cores} cores, all parts busy, that CPU allows at most "
          f"{cores * 1000 / sum(plain_cpu.values()):.0f} simple submissions/s, "
          f"{cores * 1000 / sum(data_cpu.values()):.0f}/s with a dataset", flush=True)
    baseline = (me_rate + me_rate_after) / 2
    rows.append(("simple submissions /s (GET /me: baseline)", plain_rate, baseline, "/s",
                 ">= 500/s"))
    rows.append(("submissions with a dataset grant /s", data_rate, baseline, "/s", ""))

    # 3. vre-job queue with --queued jobs waiting
    db = Database.for_service(platform.config, "portal", service("portal").migrations)
    try:
        with db.session() as session:
            model = session.get(Workload, blocker["id"])
            waiting = session.query(Workload).filter(Workload.state == "queued").count()
            others = max(0, args.queued - waiting - args.mine)
            owners = [f"bench-owner-{n}" for n in range(max(1, others // args.mine))]
            now = model.created_at
            bulk = queue_rows(model, [queuer_subject], args.mine, now)
            bulk += queue_rows(model, owners, others // len(owners), now)
            session.execute(Workload.__table__.insert(), bulk)
        with db.reading() as session:
            waiting = session.query(Workload).filter(Workload.state == "queued").count()
    finally:
        db.engine.dispose()
    # the agent plans again on its next round (each second) or on a submission's poke
    platform.call(queuer, "POST", "/api/v1/jobs", command=["true"], flavor=FLAVOR,
                  idempotency_key="poke")
    deadline = time.monotonic() + 60
    while True:
        listed = platform.call(queuer, "GET", "/api/v1/jobs?state=active")["jobs"]
        if (listed and all(j["queue"] for j in listed)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    placed = sum(1 for j in listed if j["queue"])
    base = [*vre_job, "--portal", platform.portal, "--token", queuer]
    queue_times = command_times([*base, "queue"], args.runs)
    flavor_times = command_times([*base, "flavors"], args.runs)
    lines = subprocess.run([*base, "queue"], capture_output=True, text=True).stdout
    print(f"vre-job queue: {waiting + 1} jobs queued, {len(listed)} of the user's listed "
          f"({placed} with a place), {len(lines.splitlines())} lines printed; p50 "
          f"{statistics.median(queue_times) * 1000:.0f} ms, p95 "
          f"{percentile(queue_times, 0.95) * 1000:.0f} ms; vre-job flavors p50 "
          f"{statistics.median(flavor_times) * 1000:.0f} ms, p95 "
          f"{percentile(flavor_times, 0.95) * 1000:.0f} ms", flush=True)
    rows.append(("vre-job queue p50 (flavors: baseline)", statistics.median(queue_times) * 1000,
                 statistics.median(flavor_times) * 1000, "ms", ""))
    rows.append(("vre-job queue p95 (flavors: baseline)",
                 percentile(queue_times, 0.95) * 1000, percentile(flavor_times, 0.95) * 1000,
                 "ms", "none set"))
    # Its sandbox outlives `vre up` (a restarted agent adopts it): it must be gone first.
    platform.call(researcher, "POST", f"/api/v1/jobs/{blocker['id']}/cancel")
    wait_state(platform, researcher, blocker["id"], ("cancelled",))


if __name__ == "__main__":
    main()
