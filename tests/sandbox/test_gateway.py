"""The workloads' way to the platform's API, for real: a portal served over HTTP on loopback,
workloads started by the compute agent in real sandboxes, and the gateway giving each its own
API socket. Code in the sandbox (no network) reaches the portal only through it, with its own
token, which the gateway renews from the database's record while the workload runs."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from werkzeug.serving import make_server

from portal.catalogues import seed_defaults
from portal.client import PortalClient, PortalError
from portal.compute import ComputeError
from portal.compute.agent import Agent
from portal.compute.gateway import WorkloadGateway
from portal.compute.local import LocalBackend, api_socket_path
from tests.sandbox.conftest import GRANTED, spec, wait_exit
from vre.client import unix_socket_pool
from vre.config import Config
from vre.service_auth import StaticToken
from vre.tokens import WORKLOAD_SCOPE, TokenIssuer, TokenValidator

pytestmark = pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")


@pytest.fixture
def platform(config: Config, make_app: Callable[[str], Flask],
             issuer: TokenIssuer) -> Iterator[dict[str, Any]]:
    tree = config.repository_path / "datasets" / "granted"
    tree.mkdir(parents=True)
    (tree / "slice.dcm").write_text("pixels")
    portal = make_app("portal")
    with portal.extensions["vre.db"].session() as session:
        seed_defaults(session)
    server = make_server("127.0.0.1", 0, portal, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served = config.model_copy(update={"portal_port": server.server_port})
    db = portal.extensions["vre.db"]
    agent = Agent(served, db, LocalBackend(served))
    gateway = WorkloadGateway(served, db, TokenValidator(
        config.issuer, config.token_audience, config.jwks), issuer)
    stop = threading.Event()
    keeper = threading.Thread(target=gateway.run_forever, args=(stop,), daemon=True)
    keeper.start()
    yield {"agent": agent, "gateway": gateway, "config": served, "issuer": issuer}
    stop.set()
    keeper.join(timeout=10)
    for home in agent.backend.root.iterdir():
        with contextlib.suppress(ComputeError):
            agent.backend.stop(home.name, now=True)
    server.shutdown()


def start(platform: dict[str, Any], command: list[str], owner: str = "alice") -> str:
    """A workload started with no token of its own: only the gateway's renewal gives it one."""
    workload = spec(command, owner=owner, mounts=(GRANTED,))
    platform["agent"].start(workload, "no-gpu", ["granted"])
    return workload.workload_id


def wait_socket(platform: dict[str, Any], workload_id: str) -> Path:
    path = api_socket_path(platform["config"], workload_id)
    deadline = time.monotonic() + 20
    while not (path.is_socket() and workload_id in platform["gateway"].open
               and (path.parent / "token").stat().st_size):
        assert time.monotonic() < deadline, "the gateway opened no API socket"
        time.sleep(0.05)
    return path


def through(path: Path, token: str | None) -> PortalClient:
    return PortalClient("http://localhost", StaticToken(token) if token else None,
                        pool=unix_socket_pool(str(path)))


def test_vre_job_in_a_sandbox_reaches_the_portal_through_its_socket(
        platform: dict[str, Any]) -> None:
    waits = "while [ ! -S /run/vre/api.sock ]; do sleep 0.1; done; "
    workload_id = start(platform, ["sh", "-c", waits + "python3 -m batch_tools.cli flavors "
                                   "--json && python3 -m batch_tools.cli applications"])
    exited = wait_exit(platform["agent"].backend, workload_id)
    output = platform["agent"].backend.logs(workload_id)[0].decode()
    assert exited.status == 0, output
    flavors = json.loads(output[:output.rindex("]") + 1])
    assert {f["name"] for f in flavors} >= {"no-gpu", "small-gpu", "desktop"}
    assert "desktop" in output  # the applications table


def test_the_socket_takes_only_the_workloads_own_token(
        platform: dict[str, Any], token: Callable[..., str],
        rogue_issuer: TokenIssuer) -> None:
    workload_id = start(platform, ["sleep", "300"])
    other_id = start(platform, ["sleep", "300"])
    path = wait_socket(platform, workload_id)
    own = (path.parent / "token").read_text()
    assert through(path, own).me()["subject"] == "alice"

    def workload_token(subject: str, wid: str, signer: TokenIssuer | None = None) -> str:
        return (signer or platform["issuer"]).issue(
            subject, ["researcher"], scope=WORKLOAD_SCOPE, wid=wid)[0]

    refused = [
        (None, 401, "token_missing"),
        (token("alice", "researcher"), 403, "token_not_this_workload"),  # its owner's own
        (workload_token("alice", other_id), 403, "token_not_this_workload"),
        (workload_token("alice", workload_id, rogue_issuer), 403, "token_invalid"),
        ("garbage", 403, "token_invalid"),
    ]
    for bearer, status, code in refused:
        with pytest.raises(PortalError) as caught:
            through(path, bearer).me()
        assert (caught.value.status, caught.value.code) == (status, code), bearer
    # Its own token, on a route its scope does not serve: the portal refuses it.
    with pytest.raises(PortalError) as caught:
        through(path, own)._call("GET", "/api/v1/users")
    assert (caught.value.status, caught.value.code) == (403, "token_scope")
    # Only the API: the portal's pages, probes and sign-in are not reached from here.
    for outside in ("/readyz", "/signin", "/admin/", "/api/v2/me", "/api/v1/../readyz"):
        with pytest.raises(PortalError) as caught:
            through(path, own)._call("GET", outside)
        assert caught.value.status == 404, outside


def test_a_renewed_token_comes_from_the_record_and_follows_no_link(
        platform: dict[str, Any], tmp_path: Path) -> None:
    workload_id = start(platform, ["sleep", "300"])
    path = wait_socket(platform, workload_id)
    run = path.parent
    host_file = tmp_path / "host-file"
    host_file.write_text("untouched")
    # What code in the sandbox can do to its run folder: replace the token with a link.
    (run / "token").unlink()
    (run / "token").symlink_to(host_file)
    platform["gateway"].open[workload_id].token_expires = 0.0  # due now
    deadline = time.monotonic() + 20
    while (run / "token").is_symlink():
        assert time.monotonic() < deadline, "the token was not renewed"
        time.sleep(0.05)
    assert host_file.read_text() == "untouched"
    claims = jwt.decode((run / "token").read_text(), options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["wid"] == workload_id
    assert WORKLOAD_SCOPE in claims["scope"].split() and claims["roles"] == ["researcher"]
    assert (run / "token").stat().st_mode & 0o777 == 0o600


def test_a_stopped_workload_loses_its_socket(platform: dict[str, Any]) -> None:
    workload_id = start(platform, ["sleep", "300"])
    path = wait_socket(platform, workload_id)
    platform["agent"].stop(workload_id, now=True)
    deadline = time.monotonic() + 20
    while workload_id in platform["gateway"].open or path.exists():
        assert time.monotonic() < deadline, "the API socket outlived its workload"
        time.sleep(0.05)
