"""Batch jobs end to end through the portal's API: a researcher submits a job on a released
dataset, the compute agent takes it from the queue and runs it in a real sandbox, its logs and
outputs are read back, and its traces name the datasets' content hashes and the outputs' hash,
checked against the files. Each refusal leaves no job, no grant and no trace."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from dataset_service.models import Grant
from portal import desktops
from portal.catalogues import FlavorIn, QuotaIn, create_flavor, create_quota, seed_defaults
from portal.clients import datasets_as_portal
from portal.compute.agent import Agent, socket_path
from portal.compute.local import LocalBackend
from portal.compute.outputs import manifest
from portal.models import Workload, trace_outbox
from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import site  # noqa: F401 - the fixture
from tests.sandbox.conftest import serving_agent
from vre.outbox import outbox_of

pytestmark = pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def jobsite(site: dict[str, Any], platform, config,  # noqa: F811
            steward) -> Iterator[dict[str, Any]]:
    portal = site["portal"]
    with portal.extensions["vre.db"].session() as session:
        seed_defaults(session)
    portal_config = portal.extensions.get("vre.config", config)

    def end_grant(row: Workload) -> None:
        with portal.app_context():
            desktops.end_grant(datasets_as_portal(), row.grant_id)

    agent = Agent(portal_config, portal.extensions["vre.db"], LocalBackend(portal_config),
                  on_exit=end_grant, outbox=outbox_of(portal))
    with serving_agent(agent, socket_path(portal_config)):
        dataset = create(site["datasets"], steward)
        released = site["datasets"].test_client().post(
            f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
        assert released.status_code == 200, released.get_json()
        yield {**site, "agent": agent, "dataset": released.get_json(),
               "config": portal_config, "auditor": platform[1], "steward": steward}


def as_user(token: Callable[..., str], user: str, *roles: str) -> dict[str, str]:
    return auth(token(user, *(roles or ("researcher",))))


def wait_final(client, headers: dict[str, str], job_id: str,
               timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
        if job["state"] in FINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def traces_of(where: dict[str, Any], workload_id: str,
              count: int = 3) -> dict[str, dict[str, Any]]:
    """The job's traces in the ledger by action, once `count` of them have arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = {t["action"]: t for t in where["auditor"].query(actor="res-1")
                 if t["action"].startswith("JOB_")
                 and t["details"].get("workload_id") == workload_id}
        found |= {t["action"]: t for t in where["auditor"].query(actor="service:portal")
                  if t["action"].startswith("JOB_")
                  and t["details"].get("workload_id") == workload_id}
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"the ledger holds {found} for {workload_id}")


def count_traces(where: dict[str, Any]) -> int:
    """Traces waiting in the portal's outbox and those of res-1 already in the ledger."""
    with where["portal"].extensions["vre.db"].session() as session:
        waiting = session.scalar(sa.select(sa.func.count()).select_from(trace_outbox))
    return waiting + len(list(where["auditor"].query(actor="res-1")))


def open_grants(where: dict[str, Any]) -> list[Grant]:
    with where["datasets"].extensions["vre.db"].session() as session:
        return list(session.scalars(sa.select(Grant).where(Grant.ended_at.is_(None))))


def count_jobs(where: dict[str, Any]) -> int:
    with where["portal"].extensions["vre.db"].session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Workload).where(
            Workload.kind == "job"))


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


WRITE_OUTPUTS = """
import os, pathlib
out = pathlib.Path(os.environ["VRE_JOB_OUTPUT"])
(out / "model.txt").write_text("weights 1 2 3\\n")
(out / "nested").mkdir()
(out / "nested" / "table.csv").write_text("a,b\\n1,2\\n")
print("datasets:", sorted(os.listdir(os.path.expanduser("~/datasets"))), flush=True)
print("gpus:", repr(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True)
"""


def test_a_job_runs_and_its_traces_name_data_and_outputs(jobsite, token) -> None:
    client = jobsite["portal"].test_client()
    alice = as_user(token, "res-1")
    submitted = client.post("/api/v1/jobs", headers=alice, json={
        "command": python(WRITE_OUTPUTS), "name": "write", "datasets": [jobsite["dataset"]["id"]]})
    assert submitted.status_code == 201, submitted.get_json()
    job = submitted.get_json()
    assert job["state"] in ("queued", "starting", "running") and job["flavor"] == "no-gpu"
    assert job["datasets"][0]["content_hash"] == jobsite["dataset"]["content_hash"]

    ended = wait_final(client, alice, job["id"])
    assert ended["state"] == "succeeded" and ended["exit_status"] == 0, ended
    logs = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=alice)
    assert logs.status_code == 200 and logs.headers["X-Job-State"] == "succeeded"
    text = logs.get_data(as_text=True)
    assert "'README']" in text and "gpus: ''" in text, text
    tail = client.get(f"/api/v1/jobs/{job['id']}/logs?offset={logs.headers['X-Next-Offset']}",
                      headers=alice)
    assert tail.get_data() == b""

    outputs = client.get(f"/api/v1/jobs/{job['id']}/outputs", headers=alice).get_json()
    assert [f["path"] for f in outputs["files"]] == ["model.txt", "nested/table.csv"]
    folder = jobsite["config"].home / "workspaces" / "res-1" / "jobs" / job["id"]
    assert outputs["files"][0]["sha256"] == hashlib.sha256(
        (folder / "model.txt").read_bytes()).hexdigest()
    assert outputs["manifest_hash"] == manifest(folder).hash == ended["output_hash"]
    assert outputs["recorded_hash"] == ended["output_hash"]

    traces = traces_of(jobsite, job["id"])
    traces = {k: v for k, v in traces.items() if k.startswith("JOB_")}
    assert set(traces) == {"JOB_SUBMITTED", "JOB_STARTED", "JOB_FINISHED"}
    data = [{"id": jobsite["dataset"]["id"], "hash": jobsite["dataset"]["content_hash"]}]
    for trace in traces.values():
        assert trace["datasets"] == data and trace["actor"] in ("res-1", "service:portal")
    assert traces["JOB_SUBMITTED"]["details"]["command"] == python(WRITE_OUTPUTS)
    finished = traces["JOB_FINISHED"]["details"]
    assert finished["exit_status"] == 0 and finished["output_hash"] == manifest(folder).hash
    assert open_grants(jobsite) == []  # the job's grant ended with it


def test_a_repeated_idempotency_key_answers_the_first_job(jobsite, token) -> None:
    client = jobsite["portal"].test_client()
    alice = as_user(token, "res-1")
    body = {"command": ["true"], "idempotency_key": "run-42"}
    first = client.post("/api/v1/jobs", headers=alice, json=body)
    again = client.post("/api/v1/jobs", headers=alice, json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    other = client.post("/api/v1/jobs", headers=as_user(token, "res-2"), json=body)
    assert other.status_code == 201 and other.get_json()["id"] != first.get_json()["id"]


@pytest.mark.parametrize("body,status,code", [
    ({"flavor": "no-such"}, 422, "flavor_unknown"),
    ({"flavor": "stewards-only"}, 403, "flavor_not_allowed"),
    ({}, 409, "quota_jobs"),
    ({"flavor": "small-gpu"}, 422, "exceeds_host"),
    ({"time_limit_minutes": 10000}, 422, "time_limit_too_long"),
    ({"after": ["jnosuchjob0000000"]}, 422, "dependency_unknown"),
    ({"application": "desktop"}, 422, "application_unavailable"),
    ({"image": "evil/miner:latest"}, 422, "image_not_allowed"),
    ({"datasets": ["draft"]}, 403, None),
    ({"command": []}, 422, "validation_error"),
    ({"environment": {"1BAD": "x"}}, 422, "validation_error"),
    ({"environment": {"VRE_TOKEN": "x"}}, 422, "bad_environment"),
], ids=["unknown flavor", "flavor not allowed", "quota exhausted", "GPU on a host without",
        "time limit beyond the flavor", "unknown dependency", "not a batch application",
        "image not in the catalogue", "dataset not granted", "no command", "bad variable",
        "platform variable"])
def test_refusals_queue_nothing_grant_nothing_trace_nothing(
        jobsite, token, steward, body, status, code) -> None:
    client = jobsite["portal"].test_client()
    with jobsite["portal"].extensions["vre.db"].session() as session:
        create_flavor(session, FlavorIn(name="stewards-only", cpus=1, memory_mib=256,
                                        max_runtime_minutes=10, allowed_roles=["steward"]))
        if code == "quota_jobs":
            create_quota(session, QuotaIn(scope="user", subject="res-1", max_jobs=0))
    if body.get("datasets") == ["draft"]:
        body = {"datasets": [create(jobsite["datasets"], steward)["id"]]}
    before = (count_jobs(jobsite), len(open_grants(jobsite)), count_traces(jobsite))
    answer = client.post("/api/v1/jobs", headers=as_user(token, "res-1"),
                         json={"command": ["true"], **body})
    assert answer.status_code == status, answer.get_json()
    if code:
        assert answer.get_json()["error"]["code"] == code
    assert (count_jobs(jobsite), len(open_grants(jobsite)), count_traces(jobsite)) \
        == before


def gpu_jobs(jobsite: dict[str, Any], token: Callable[..., str], devices: list[str],
             flavor: FlavorIn, count: int, seconds: int) -> tuple[Any, dict[str, str],
                                                                 list[str]]:
    """No GPU on these machines: a declared inventory stands in for one. Submits `count`
    jobs of `flavor`, each printing its CUDA_VISIBLE_DEVICES and then running `seconds`
    (long enough for the others to start beside it); the client, the owner's headers, ids."""
    declared = jobsite["config"].model_copy(update={"gpu_devices": devices})
    jobsite["portal"].extensions["vre.config"] = declared
    agent = jobsite["agent"]
    agent.backend, agent.config = LocalBackend(declared), declared
    with jobsite["portal"].extensions["vre.db"].session() as session:
        create_flavor(session, flavor)
    client = jobsite["portal"].test_client()
    alice = as_user(token, "res-1")
    ids = []
    for _ in range(count):
        job = client.post("/api/v1/jobs", headers=alice, json={
            "flavor": flavor.name, "command": python(
                "import os, time; print('gpus', os.environ['CUDA_VISIBLE_DEVICES'], "
                f"flush=True); time.sleep({seconds})")})
        assert job.status_code == 201, job.get_json()
        ids.append(job.get_json()["id"])
    return client, alice, ids


def test_a_job_sees_the_gpus_it_was_given(jobsite, token) -> None:
    """Each job checks CUDA_VISIBLE_DEVICES names the device it was given and no other."""
    client, alice, ids = gpu_jobs(jobsite, token, ["0", "1"], FlavorIn(
        name="tiny-gpu", cpus=0.5, memory_mib=256, gpus=1, max_runtime_minutes=10), 2, 3)
    seen = []
    for job_id in ids:
        ended = wait_final(client, alice, job_id)
        assert ended["state"] == "succeeded", ended
        text = client.get(f"/api/v1/jobs/{job_id}/logs", headers=alice).get_data(as_text=True)
        seen.append((ended["gpus"], text.strip()))
    assert sorted(seen) == [(["0"], "gpus 0"), (["1"], "gpus 1")]
    started = traces_of(jobsite, ids[0], 2)["JOB_STARTED"]["details"]
    assert started["gpus"] in (["0"], ["1"])


def test_jobs_of_a_sharing_flavor_run_together_on_one_gpu(jobsite, token) -> None:
    """A flavor that shares its GPU by two: two of its jobs run at the same time on the one
    declared GPU, each told so by CUDA_VISIBLE_DEVICES; a third waits for a share."""
    client, alice, ids = gpu_jobs(jobsite, token, ["0"], FlavorIn(
        name="half-gpu", cpus=0.25, memory_mib=256, gpus=1, gpu_share=2,
        max_runtime_minutes=10), 3, 4)
    ended = [wait_final(client, alice, job_id) for job_id in ids]
    assert [e["state"] for e in ended] == ["succeeded"] * 3, ended
    assert [e["gpus"] for e in ended] == [["0"]] * 3
    for job_id in ids:
        text = client.get(f"/api/v1/jobs/{job_id}/logs", headers=alice).get_data(as_text=True)
        assert text.strip() == "gpus 0"
    spans = sorted((datetime.fromisoformat(e["started_at"]), datetime.fromisoformat(
        e["ended_at"])) for e in ended)
    assert spans[1][0] < spans[0][1], "the first two ran at the same time"
    assert spans[2][0] >= min(spans[0][1], spans[1][1]), "the third waited for a share"


def one_slot(jobsite: dict[str, Any]) -> None:
    """The queue hands out one CPU: one job of the `one-cpu` flavor runs at a time."""
    narrow = jobsite["config"].model_copy(update={"job_cpus": 1.0})
    jobsite["agent"].config = narrow
    with jobsite["portal"].extensions["vre.db"].session() as session:
        create_flavor(session, FlavorIn(name="one-cpu", cpus=1, memory_mib=256,
                                        max_runtime_minutes=10))


def submit(client, headers: dict[str, str], command: list[str], **extra: Any) -> dict:
    answer = client.post("/api/v1/jobs", headers=headers,
                         json={"command": command, "flavor": "one-cpu", **extra})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def wait_state(client, headers: dict[str, str], job_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
        if job["state"] == state:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {job['state']}, never {state}")


def test_cancel_while_queued_and_while_running_and_a_failed_dependency(jobsite, token) -> None:
    one_slot(jobsite)
    client = jobsite["portal"].test_client()
    alice = as_user(token, "res-1")
    running = submit(client, alice, ["sleep", "300"], datasets=[jobsite["dataset"]["id"]])
    wait_state(client, alice, running["id"], "running")
    waiting = submit(client, alice, ["true"], datasets=[jobsite["dataset"]["id"]])
    place = wait_state(client, alice, waiting["id"], "queued")
    deadline = time.monotonic() + 10
    while place["queue"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
        place = client.get(f"/api/v1/jobs/{waiting['id']}", headers=alice).get_json()
    assert place["queue"]["position"] == 1 and place["queue"]["reason"] == "Resources", place
    assert len(open_grants(jobsite)) == 2

    cancelled = client.post(f"/api/v1/jobs/{waiting['id']}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.get_json()["state"] == "cancelled"
    again = client.post(f"/api/v1/jobs/{waiting['id']}/cancel", headers=alice)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "job_ended"
    assert client.post(f"/api/v1/jobs/{running['id']}/cancel",
                       headers=as_user(token, "res-2")).status_code == 404
    stopped = client.post(f"/api/v1/jobs/{running['id']}/cancel", headers=alice)
    assert stopped.status_code == 200, stopped.get_json()
    ended = wait_final(client, alice, running["id"])
    assert ended["state"] == "cancelled" and ended["started_at"], ended
    deadline = time.monotonic() + 10  # the agent ends the grant once it recorded the end
    while open_grants(jobsite) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_grants(jobsite) == []
    assert traces_of(jobsite, waiting["id"], 2).keys() == {"JOB_SUBMITTED", "JOB_CANCELLED"}
    assert "JOB_CANCELLED" in traces_of(jobsite, running["id"], 3)

    failing = submit(client, alice, ["false"])
    after = submit(client, alice, ["true"], after=[failing["id"]])
    assert wait_final(client, alice, failing["id"])["state"] == "failed"
    doomed = wait_final(client, alice, after["id"])
    assert doomed["state"] == "cancelled" and doomed["reason"] == "dependency_failed"
    assert failing["id"] in doomed["stop_reason"]


def test_time_and_memory_limits_end_a_job_and_say_so(jobsite, token) -> None:
    client = jobsite["portal"].test_client()
    alice = as_user(token, "res-1")
    with jobsite["portal"].extensions["vre.db"].session() as session:
        create_flavor(session, FlavorIn(name="small-memory", cpus=1, memory_mib=128,
                                        max_runtime_minutes=10))
    slow = client.post("/api/v1/jobs", headers=alice, json={
        "command": ["sleep", "300"], "flavor": "small-memory", "time_limit_minutes": 0.1})
    hungry = client.post("/api/v1/jobs", headers=alice, json={
        "command": python("b = bytearray(600 * 2**20); b[::4096] = b'x' * len(b[::4096])"),
        "flavor": "small-memory"})
    assert slow.status_code == hungry.status_code == 201
    timed_out = wait_final(client, alice, slow.get_json()["id"])
    assert timed_out["state"] == "failed" and timed_out["reason"] == "time_limit", timed_out
    assert 5 <= timed_out["wall_seconds"] < 30
    if not jobsite["agent"].backend.limits:
        pytest.skip("this host gives no cgroup limits: memory cannot be limited here")
    killed = wait_final(client, alice, hungry.get_json()["id"])
    assert killed["state"] == "failed" and killed["reason"] == "out_of_memory", killed
    details = traces_of(jobsite, killed["id"])["JOB_FINISHED"]["details"]
    assert details["reason"] == "out_of_memory" and details["memory_peak_bytes"] > 0


def test_a_workload_token_submits_for_its_owner_and_nothing_else(jobsite, token) -> None:
    """A running workload's token (as a desktop's: its owner, itself, its datasets) submits
    jobs on its datasets; a forged pairing, a stopped workload and a revoked grant are
    refused, and the token sees only its own workload's jobs."""
    from portal.compute.agent import workload_tokens

    agent, client = jobsite["agent"], jobsite["portal"].test_client()
    alice = as_user(token, "res-1")
    parent = client.post("/api/v1/jobs", headers=alice, json={
        "command": ["sleep", "300"], "datasets": [jobsite["dataset"]["id"]]}).get_json()
    wait_state(client, alice, parent["id"], "running")
    mint = workload_tokens(jobsite["config"])
    with jobsite["portal"].extensions["vre.db"].session() as session:
        own = auth(mint(session.get(Workload, parent["id"])))
        forged_row = session.get(Workload, parent["id"])
        forged_row.owner_id = "res-2"
        forged = auth(mint(forged_row))
        session.rollback()

    child = client.post("/api/v1/jobs", headers=own, json={"command": ["true"]})
    assert child.status_code == 201, child.get_json()
    assert child.get_json()["desktop_id"] == parent["id"]
    assert [d["id"] for d in child.get_json()["datasets"]] == [jobsite["dataset"]["id"]]
    listed = client.get("/api/v1/jobs?state=all", headers=own).get_json()["jobs"]
    assert [j["id"] for j in listed] == [child.get_json()["id"]]
    assert client.get(f"/api/v1/jobs/{parent['id']}/logs", headers=own).status_code == 200
    other = submit_as(client, alice, ["true"])
    assert client.get(f"/api/v1/jobs/{other}", headers=own).status_code == 404

    refused = client.post("/api/v1/jobs", headers=forged, json={"command": ["true"]})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] \
        == "workload_unknown"
    outside = client.post("/api/v1/jobs", headers=own,
                          json={"command": ["true"], "datasets": ["elsewhere"]})
    assert outside.get_json()["error"]["code"] == "dataset_not_in_workload"

    # The dataset is invalidated while the workload runs: its next submission is refused.
    invalidated = jobsite["datasets"].test_client().post(
        f"/api/v1/datasets/{jobsite['dataset']['id']}/invalidate",
        headers=jobsite["steward"], json={"reason": "consent withdrawn"})
    assert invalidated.status_code == 200, invalidated.get_json()
    before = count_jobs(jobsite)
    late = client.post("/api/v1/jobs", headers=own, json={"command": ["true"]})
    assert late.status_code in (403, 409) and count_jobs(jobsite) == before, late.get_json()

    agent.stop(parent["id"], now=True)
    gone = client.post("/api/v1/jobs", headers=own, json={"command": ["true"]})
    # Refused as a revoked token, or (while the revocation is not yet seen) as the token of
    # a workload that is not running: either way nothing is queued.
    assert (gone.status_code, gone.get_json()["error"]["code"]) in (
        (401, "token_revoked"), (403, "workload_not_running")), gone.get_json()
    assert count_jobs(jobsite) == before


def submit_as(client, headers: dict[str, str], command: list[str]) -> str:
    answer = client.post("/api/v1/jobs", headers=headers, json={"command": command})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["id"]


def test_two_users_alternate_and_positions_match_the_starts(jobsite, token) -> None:
    one_slot(jobsite)
    client = jobsite["portal"].test_client()
    alice, bob = as_user(token, "res-1"), as_user(token, "res-2")
    blocker = submit(client, alice, ["sleep", "300"])
    wait_state(client, alice, blocker["id"], "running")
    ids = {"res-1": [submit(client, alice, ["true"])["id"] for _ in range(20)],
           "res-2": [submit(client, bob, ["true"])["id"] for _ in range(20)]}
    owner_of = {j: who for who, jobs in ids.items() for j in jobs}
    deadline = time.monotonic() + 20
    while len(jobsite["agent"].places()) < 40:
        assert time.monotonic() < deadline, "the queue never placed every job"
        time.sleep(0.1)
    places = jobsite["agent"].places()
    predicted = sorted(places, key=lambda j: places[j]["position"])
    mine = client.get("/api/v1/jobs", headers=bob).get_json()["jobs"]
    assert [j["id"] for j in mine] == [j for j in predicted if owner_of[j] == "res-2"]
    assert all(j["queue"]["reason"] in ("Resources", "Priority") for j in mine)

    client.post(f"/api/v1/jobs/{blocker['id']}/cancel", headers=alice)
    for job_id in predicted:
        wait_final(client, as_user(token, owner_of[job_id]), job_id, timeout=120)
    with jobsite["portal"].extensions["vre.db"].session() as session:
        rows = session.scalars(sa.select(Workload).where(Workload.id.in_(list(owner_of))))
        started = [r.id for r in sorted(rows, key=lambda r: r.started_at)]
    assert started == predicted
    owners = [owner_of[j] for j in started]
    # res-1 used the machine (the blocker) before: res-2 goes first, then they alternate.
    assert owners == ["res-2", "res-1"] * 20
