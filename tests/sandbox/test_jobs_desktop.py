"""Jobs from inside a launched desktop, for real: the portal served over HTTP with the dataset
service and tracer behind it, the compute agent on its socket, the workload gateway, and a
desktop sandbox whose session runs `vre-job` the way a researcher types it in a terminal.
The example jobs (a PyTorch classifier, then Spark statistics after it) run on CPU in job
sandboxes; their logs, outputs and traces are checked against the files on the host."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from portal import desktops
from portal.catalogues import ApplicationIn, create_application, seed_defaults
from portal.clients import datasets_as_portal
from portal.compute.agent import Agent, socket_path, workload_tokens
from portal.compute.gateway import WorkloadGateway
from portal.compute.local import LocalBackend
from portal.compute.outputs import manifest
from portal.models import Workload
from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import site  # noqa: F401 - the fixture
from tests.sandbox.conftest import serving_agent
from vre.outbox import outbox_of
from vre.web import validator_for

pytestmark = pytest.mark.skipif(not shutil.which("bwrap") or not shutil.which("Xvnc"),
                                reason="needs bubblewrap and TigerVNC's Xvnc")

# What the researcher types in the desktop's terminal: a training job waited for, a Spark job
# after it, the logs followed, and what came out listed. Results go to ~/persistent.
SESSION = r"""
set -u
out=~/persistent/session
mkdir -p $out
while [ ! -S /run/vre/api.sock ]; do sleep 0.1; done
data=$(ls -d ~/datasets/*/ | head -1)
vre-job flavors > $out/flavors.txt 2>&1
train=$(vre-job submit --flavor no-gpu --name train --wait -- \
    python3 -m batch_tools.examples.train_classifier "$data" --epochs 1 --shape 8 24 24 \
    --workers 0 2> $out/submit.err)
echo $? > $out/train.rc
echo "$train" > $out/train.id
stats=$(vre-job submit --name stats --time 5 --after "$train" -- \
    python3 -m batch_tools.examples.series_statistics "$data")
echo "$stats" > $out/stats.id
vre-job logs --follow "$stats" > $out/stats.log 2>&1
vre-job logs "$train" > $out/train.log 2>&1
vre-job show --json "$stats" > $out/stats.json
vre-job history --json > $out/history.json
vre-job outputs --json "$train" > $out/train-outputs.json
vre-export request --json --title "Classifier" --purpose "The trained model for the paper" \
    "jobs/$train/model.pt" ~/persistent/jobs/"$train"/metrics.json > $out/export.json 2>&1
ls -R ~/persistent/jobs > $out/listing.txt
echo done > $out/done
sleep 600
"""


@pytest.fixture
def desk(site: dict[str, Any], platform, config, steward) -> Iterator[dict[str, Any]]:  # noqa: F811
    portal = site["portal"]
    with portal.extensions["vre.db"].session() as session:
        seed_defaults(session)
        create_application(session, ApplicationIn(
            id="terminal-session", name="Scripted terminal", kind="desktop",
            image="vre/desktop:0.1.0", local_command=["bash", "persistent/session.sh"]))
    server = make_server("127.0.0.1", 0, portal, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served = portal.extensions.get("vre.config", config).model_copy(
        update={"portal_port": server.server_port})
    portal.extensions["vre.config"] = served
    db = portal.extensions["vre.db"]

    def end_grant(row: Workload) -> None:
        with portal.app_context():
            desktops.end_grant(datasets_as_portal(), row.grant_id)

    agent = Agent(served, db, LocalBackend(served), on_exit=end_grant,
                  outbox=outbox_of(portal), tokens=workload_tokens(served))
    gateway = WorkloadGateway(served, db, validator_for(served), portal.extensions["vre.issuer"])
    stop = threading.Event()
    keeper = threading.Thread(target=gateway.run_forever, args=(stop,), daemon=True)
    keeper.start()
    try:
        with serving_agent(agent, socket_path(served)):
            dataset = create(site["datasets"], steward)
            released = site["datasets"].test_client().post(
                f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
            assert released.status_code == 200, released.get_json()
            yield {**site, "dataset": released.get_json(), "config": served,
                   "auditor": platform[1]}
    finally:
        stop.set()
        keeper.join(timeout=10)
        gateway.close()
        server.shutdown()


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.5)


def test_jobs_submitted_from_a_desktop_run_and_are_traced(desk, token) -> None:
    client = desk["portal"].test_client()
    alice = auth(token("res-1", "researcher"))
    persistent = desk["config"].home / "workspaces" / "res-1"
    out = persistent / "session"
    # What the researcher types, kept where the desktop's terminal finds it (~/persistent).
    persistent.mkdir(parents=True, exist_ok=True)
    (persistent / "session.sh").write_text(SESSION)
    (persistent / "session.sh").chmod(0o644)
    started = client.post("/api/v1/desktops", headers=alice, json={
        "application": "terminal-session", "flavor": "desktop",
        "datasets": [desk["dataset"]["id"]]})
    assert started.status_code == 201, started.get_json()
    desktop = started.get_json()
    wait_for(out / "done", 400)

    assert (out / "train.rc").read_text().strip() == "0", (out / "submit.err").read_text()
    train_id = (out / "train.id").read_text().split()[0]
    stats_id = (out / "stats.id").read_text().split()[0]
    assert "no-gpu" in (out / "flavors.txt").read_text()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["state"] == "succeeded", (out / "stats.log").read_text()
    assert stats["after"] == [train_id] and stats["desktop_id"] == desktop["id"]
    assert "accuracy" in (out / "train.log").read_text()
    listing = (out / "listing.txt").read_text()
    assert train_id in listing and "model.pt" in listing and "metrics.json" in listing
    history = {j["id"]: j for j in json.loads((out / "history.json").read_text())}
    assert history[train_id]["state"] == "succeeded" and history[train_id]["exit_status"] == 0

    folder = persistent / "jobs" / train_id
    listed = json.loads((out / "train-outputs.json").read_text())
    assert listed["manifest_hash"] == manifest(folder).hash
    dataset_ref = {"id": desk["dataset"]["id"], "hash": desk["dataset"]["content_hash"]}
    for job_id in (train_id, stats_id):
        traces = {t["action"]: t for t in traces_for(desk, job_id, 3)}
        assert set(traces) == {"JOB_SUBMITTED", "JOB_STARTED", "JOB_FINISHED"}
        assert all(t["datasets"] == [dataset_ref] for t in traces.values())
        assert traces["JOB_SUBMITTED"]["details"]["parent_workload"] == desktop["id"]
        finished = traces["JOB_FINISHED"]["details"]
        assert finished["exit_status"] == 0
        assert finished["output_hash"] == manifest(persistent / "jobs" / job_id).hash
    # The results are asked out from the desktop: pinned, checked, waiting for review.
    export = json.loads((out / "export.json").read_text())
    assert export["state"] == "in_review" and export["datasets"] == [dataset_ref], export
    pinned = {f["path"]: f for f in export["files"]}
    for name in ("model.pt", "metrics.json"):
        item = pinned[f"jobs/{train_id}/{name}"]
        assert item["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert item["verdict"] != "refuse", item["findings"]
    assert client.delete(f"/api/v1/desktops/{desktop['id']}", headers=alice).status_code == 200


def traces_for(desk: dict[str, Any], job_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found = [t for t in desk["auditor"].query(dataset=desk["dataset"]["id"])
                 if t["action"].startswith("JOB_")
                 and t["details"].get("workload_id") == job_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
