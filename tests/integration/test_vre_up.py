"""`vre up` as an operator runs it: a subprocess in a fresh data directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
import sqlalchemy as sa

from portal.models import Flavor, User
from tests.conftest import POSTGRES_URL
from tests.helpers import free_port
from vre.config import load_config
from vre.db import Database

pytestmark = pytest.mark.integration
ADMIN_PASSWORD = "correct-horse-battery"


def vre_env(home: Path, backend: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update(VRE_HOME=str(home), VRE_PORTAL_PORT=str(free_port()),
               VRE_DATASET_PORT=str(free_port()), VRE_TRACER_PORT=str(free_port()),
               VRE_CHAIN_PORT=str(free_port()), VRE_VNC_PROXY_PORT=str(free_port()),
               VRE_ADMIN_PASSWORD=ADMIN_PASSWORD, VRE_LOG_LEVEL="WARNING")
    if backend == "postgresql":
        prefix = f"up{os.getpid()}_{int(time.time() * 1000) % 10**8}_"
        env.update(VRE_DATABASE_URL=POSTGRES_URL, VRE_DATABASE_SCHEMA_PREFIX=prefix)
    env.update(extra)
    return env


def drop_schemas(env: dict[str, str]) -> None:
    prefix = env.get("VRE_DATABASE_SCHEMA_PREFIX")
    if not prefix:
        return
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                    (prefix + "%",)).fetchall():
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


class Platform:
    """A running `vre up` and what it printed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher", "up"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.banner: list[str] = []
        deadline = time.monotonic() + 300  # each process may take a while on a loaded machine
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"vre up ended early ({self.proc.wait()}): {err}")
            self.banner.append(line)
            if line.startswith("Press Ctrl-C"):
                return
        raise AssertionError("vre up did not print its banner in time")

    def url(self, service: str) -> str:
        key = {"portal": "VRE_PORTAL_PORT", "dataset_service": "VRE_DATASET_PORT",
               "tracer": "VRE_TRACER_PORT"}[service]
        return f"http://127.0.0.1:{self.env[key]}"

    def child_pids(self) -> list[int]:
        state = json.loads((Path(self.env["VRE_HOME"]) / "run" / "state.json").read_text())
        return [p["pid"] for p in state["processes"]]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def up_env(tmp_path: Path, backend: str) -> Iterator[dict[str, str]]:
    env = vre_env(tmp_path / "var", backend)
    yield env
    drop_schemas(env)


def test_vre_up_runs_the_platform_and_keeps_state(up_env: dict[str, str]) -> None:
    platform = Platform(up_env)
    try:
        banner = "".join(platform.banner)
        assert platform.url("portal") in banner
        assert ADMIN_PASSWORD not in banner, "a password from the environment is not echoed"
        for service in ("portal", "dataset_service", "tracer"):
            assert requests.get(platform.url(service) + "/healthz", timeout=5).status_code == 200
            ready = requests.get(platform.url(service) + "/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
        home = requests.get(platform.url("portal") + "/", timeout=5)
        assert home.status_code == 200 and "In-situ VRE" in home.text

        # Tokens cross processes: the portal issues, the tracer validates over its JWKS.
        user = requests.post(platform.url("portal") + "/api/v1/tokens", timeout=5, json={
            "grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD})
        assert user.status_code == 200, user.text
        me = requests.get(platform.url("portal") + "/api/v1/me", timeout=5, headers={
            "Authorization": "Bearer " + user.json()["access_token"]})
        assert "admin" in me.json()["roles"]
        # A body nested 100,000 deep is refused, and no served worker dies of it.
        deep = b"[" * 100_000 + b"]" * 100_000
        for service, path in (("portal", "/api/v1/tokens"),
                              ("dataset_service", "/api/v1/projects")):
            refused = requests.post(platform.url(service) + path, data=deep, timeout=10,
                                    headers={"Content-Type": "application/json",
                                             "Authorization": "Bearer "
                                             + user.json()["access_token"]})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "json_too_deep"
        for service in ("portal", "dataset_service", "tracer"):
            assert requests.get(platform.url(service) + "/healthz", timeout=5).status_code == 200
        status = subprocess.run([sys.executable, "-m", "launcher", "status"], env=up_env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        # Each process with a probe answers it: the services, the chain node, the anchorer
        # and the workload gateway.
        assert status.stdout.count(" ready") == 6
        assert (Path(up_env["VRE_HOME"]) / "import" / "demo" / "clinical.csv").is_file()
        assert_files_are_private(Path(up_env["VRE_HOME"]))
        assert_the_demo_is_published(platform)
        pids = platform.child_pids()
    finally:
        code = platform.stop()
    assert code == 0
    assert not [pid for pid in pids if alive(pid)], "Ctrl-C stops every process"

    again = Platform(up_env)
    try:
        assert "first start" not in "".join(again.banner)
        user = requests.post(again.url("portal") + "/api/v1/tokens", timeout=5, json={
            "grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD})
        assert user.status_code == 200, "the administrator survives a restart"
    finally:
        assert again.stop() == 0


def assert_files_are_private(home: Path) -> None:
    """After a real first start: the data directory is the platform's alone, and blobs are
    readable by its group (the workloads it starts) but not by every local account."""
    assert home.stat().st_mode & 0o777 == 0o700
    private = [p for name in ("db", "logs", "keys", "secrets", "run", "chain")
               for p in (home / name).rglob("*")]
    assert any(p.suffix == ".log" for p in private) and any(p.suffix == ".pem" for p in private)
    loose = {str(p.relative_to(home)): oct(p.stat().st_mode & 0o777) for p in private
             if p.stat().st_mode & 0o077}
    assert not loose, f"readable beyond the platform: {loose}"
    blobs = [p for p in (home / "repository" / "blobs").rglob("*") if p.is_file()]
    assert blobs, "the demo studies are in the repository"
    for path in [*blobs, *(p.parent for p in blobs)]:
        mode = path.stat().st_mode
        assert mode & 0o007 == 0, f"{path.relative_to(home)} is open to every account"
        assert mode & 0o040, f"{path.relative_to(home)} is not readable by the group"
        assert mode & 0o222 == 0 or path.is_dir(), "blobs are read-only"


def assert_the_demo_is_published(platform: Platform) -> None:
    """A newcomer's first look: the catalogue lists the demo dataset, its landing page and
    its history are there, without signing in."""
    banner = "".join(platform.banner)
    assert "demo dataset published" in banner, banner
    found = requests.get(platform.url("dataset_service") + "/api/v1/catalogue", timeout=10)
    assert found.status_code == 200 and found.json()["total"] >= 1, found.text
    dataset = found.json()["results"][0]
    portal = platform.url("portal")
    catalogue = requests.get(portal + "/catalogue", timeout=10)
    assert catalogue.status_code == 200 and dataset["name"] in catalogue.text
    landing = requests.get(f"{portal}/datasets/{dataset['id']}", timeout=10)
    assert landing.status_code == 200 and "What it holds" in landing.text
    # Traces reach the ledger from the outbox just after their action commits.
    deadline = time.monotonic() + 60
    while True:
        history = requests.get(f"{portal}/datasets/{dataset['id']}/history", timeout=30)
        assert history.status_code == 200, history.text
        if "PUBLISH" in history.text or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "PUBLISH" in history.text and "person-" in history.text
    # The first start's ingest of the demo studies is traced like any other, by the steward.
    admin = requests.post(portal + "/api/v1/tokens", timeout=10, json={
        "grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD}).json()
    deadline = time.monotonic() + 60
    while True:  # kept in the outbox at the first start, sent once the service runs
        traces = requests.get(platform.url("tracer") + "/api/v1/traces", timeout=10,
                              params={"action": "INGEST_STUDIES"},
                              headers={"Authorization": "Bearer " + admin["access_token"]})
        assert traces.status_code == 200, traces.text
        ingested = traces.json()["traces"]
        if ingested or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    me = requests.get(portal + "/api/v1/me", timeout=10,
                      headers={"Authorization": "Bearer " + admin["access_token"]}).json()
    assert ingested and {t["actor"] for t in ingested} == {me["subject"]}, ingested
    assert all(t["details"]["study_hashes"] for t in ingested), ingested


def run_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher", "up"], env=env, capture_output=True,
                          text=True, timeout=90)


def assert_clean_failure(result: subprocess.CompletedProcess[str], home: Path,
                         *words: str) -> None:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not (home / "run" / "state.json").exists(), "no processes left behind"


@pytest.mark.parametrize("key,value", [
    ("VRE_PORTAL_PORT", "eighty"), ("VRE_TRACER_URL", "not a url"),
    ("VRE_DATABASE_URL", "mysql://x/y"), ("VRE_BOGUS_SETTING", "1"),
])
def test_bad_configuration_stops_start_naming_the_key(tmp_path: Path, key: str,
                                                      value: str) -> None:
    env = vre_env(tmp_path / "var", "sqlite", **{key: value})
    assert_clean_failure(run_up(env), tmp_path / "var", key)


def test_an_import_root_over_the_data_directory_stops_start_naming_it(tmp_path: Path) -> None:
    env = vre_env(tmp_path / "var", "sqlite", VRE_IMPORT_ROOT=str(tmp_path))
    assert_clean_failure(run_up(env), tmp_path / "var", "VRE_IMPORT_ROOT")


def test_occupied_port_stops_start(tmp_path: Path) -> None:
    env = vre_env(tmp_path / "var", "sqlite")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(env["VRE_DATASET_PORT"])))
        sock.listen()
        result = run_up(env)
    assert_clean_failure(result, tmp_path / "var", env["VRE_DATASET_PORT"], "dataset_service")


def test_unreachable_database_stops_start(tmp_path: Path) -> None:
    env = vre_env(tmp_path / "var", "sqlite",
                  VRE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/vre")
    assert_clean_failure(run_up(env), tmp_path / "var", "database unreachable", "127.0.0.1")


def test_migrate_seeds_catalogues_and_the_administrator_once(tmp_path: Path) -> None:
    env = {**os.environ, "VRE_HOME": str(tmp_path / "home"),
           "VRE_ADMIN_PASSWORD": "pw-" + "x" * 12, "VRE_SECRET_KEY": "s" * 48}
    vre = [sys.executable, "-m", "launcher"]
    first = subprocess.run([*vre, "migrate", "--seed", "--admin"], env=env, text=True,
                           capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "portal: at" in first.stdout and "password" not in first.stdout, \
        "a password from the environment is not printed"
    del env["VRE_ADMIN_PASSWORD"]
    again = subprocess.run([*vre, "migrate", "--seed", "--admin"], env=env, text=True,
                           capture_output=True, timeout=120)
    assert again.returncode == 0 and "created" not in again.stdout, "only where there is none"
    config = load_config(env={"VRE_HOME": str(tmp_path / "home")})
    db = Database.for_service(config, "portal", "portal:migrations")
    with db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Flavor)) >= 3
        assert session.scalar(sa.select(User.roles).where(User.username == "admin"))
    db.engine.dispose()
