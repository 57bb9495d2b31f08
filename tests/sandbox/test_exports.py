"""The export airlock end to end: a job writes results, its owner asks for them to leave,
the files are pinned and checked (a DICOM renamed, a repository file copied, a small count,
study UIDs), two stewards of the project review them without seeing each other's votes,
and the requester alone downloads the approved files over short-lived links, with the
hashes that were pinned. Each step is in the ledger."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from portal.exports import requests as export_requests
from tests.helpers import auth
from tests.portal_helpers import site  # noqa: F401 - the fixture
from tests.sandbox.test_jobs import jobsite, python, wait_final  # noqa: F401 - fixture

WRITE_RESULTS = """
import os, pathlib, shutil
out = pathlib.Path(os.environ["VRE_JOB_OUTPUT"])
(out / "model.bin").write_bytes(bytes(range(256)) * 64)
(out / "results.csv").write_text("group,n\\nA,40\\nB,25\\n")
(out / "small.csv").write_text("group,n\\nA,40\\nB,3\\n")
data = pathlib.Path(os.path.expanduser("~/datasets"))
scan = next(p for p in data.rglob("*.dcm"))
shutil.copy(scan, out / "notes.txt")  # a DICOM file under another name
import pydicom
uid = pydicom.dcmread(scan, stop_before_pixels=True).StudyInstanceUID
(out / "studies.txt").write_text("studies used: " + uid + "\\n")
import io, tarfile, zipfile, numpy
inner = io.BytesIO()
with zipfile.ZipFile(inner, "w") as archive:
    archive.write(scan, "scan.bin")
with tarfile.open(out / "bundle.tar", "w") as bundle:
    info = tarfile.TarInfo("inner.zip")
    info.size = len(inner.getvalue())
    bundle.addfile(info, io.BytesIO(inner.getvalue()))
numpy.save(out / "pixels.npy", pydicom.dcmread(scan).pixel_array)
print("written")
"""


@pytest.fixture
def airlock(jobsite, token) -> dict[str, Any]:  # noqa: F811
    stewards = jobsite["datasets"].test_client()
    added = stewards.put("/api/v1/projects/lung/members", headers=jobsite["steward"],
                         json={"user_id": "steward-2", "role": "steward"})
    assert added.status_code in (200, 201), added.get_json()
    client = jobsite["portal"].test_client()
    alice = auth(token("res-1", "researcher"))
    job = client.post("/api/v1/jobs", headers=alice, json={
        "command": python(WRITE_RESULTS), "datasets": [jobsite["dataset"]["id"]]}).get_json()
    ended = wait_final(client, alice, job["id"])
    assert ended["state"] == "succeeded", client.get(
        f"/api/v1/jobs/{job['id']}/logs", headers=alice).get_data(as_text=True)
    return {**jobsite, "job": ended, "alice": alice}


def by_path(export: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"].rsplit("/", 1)[-1]: f for f in export["files"]}


def test_results_leave_only_through_two_reviewers(airlock, token) -> None:
    client = airlock["portal"].test_client()
    alice, job_id = airlock["alice"], airlock["job"]["id"]
    names = ["model.bin", "results.csv", "small.csv", "notes.txt", "studies.txt",
             "bundle.tar", "pixels.npy"]
    asked = client.post("/api/v1/exports", headers=alice, json={
        "title": "Model and figures", "purpose": "For the paper's tables",
        "files": [f"jobs/{job_id}/{n}" for n in names]})
    assert asked.status_code == 201, asked.get_json()
    export = asked.get_json()
    assert export["state"] == "in_review" and export["project"] == "lung", export
    assert export["datasets"] == [{"id": airlock["dataset"]["id"],
                                   "hash": airlock["dataset"]["content_hash"]}]
    files = by_path(export)
    folder = airlock["config"].home / "workspaces" / "res-1" / "jobs" / job_id
    for name in names:
        assert files[name]["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    codes = {n: {x["code"] for x in f["findings"]} for n, f in files.items()}
    assert files["notes.txt"]["verdict"] == "refuse" and codes["notes.txt"] & {
        "dicom", "repository_file"}
    assert files["small.csv"]["verdict"] == "flag" and "small_count" in codes["small.csv"]
    assert files["studies.txt"]["verdict"] == "flag" and "identifier" in codes["studies.txt"]
    assert files["model.bin"]["verdict"] in ("pass", "flag")
    assert files["results.csv"]["verdict"] == "pass", codes["results.csv"]
    assert files["bundle.tar"]["verdict"] == "refuse" and "dicom" in codes["bundle.tar"]
    assert "inner.zip!scan.bin" in files["bundle.tar"]["findings"][0]["where"]
    assert files["pixels.npy"]["verdict"] == "refuse" and "dataset_pixels" in codes["pixels.npy"]

    # The file changes after submission: what is reviewed is what was pinned.
    (folder / "model.bin").write_bytes(b"something else")

    first, second = auth(token("steward-1", "steward")), auth(token("steward-2", "steward"))
    outsider = auth(token("steward-9", "steward"))
    url = f"/api/v1/exports/{export['id']}"
    assert client.get(url, headers=outsider).status_code == 404
    refused = client.post(f"{url}/votes", headers=alice, json={
        "file_id": files["model.bin"]["id"], "vote": "approve"})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "own_request"
    never = client.post(f"{url}/votes", headers=first, json={
        "file_id": files["notes.txt"]["id"], "vote": "approve"})
    assert never.get_json()["error"]["code"] == "file_refused"

    plan = {"model.bin": ("approve", "approve"), "results.csv": ("approve", "approve"),
            "studies.txt": ("approve", "reject"), "small.csv": ("reject", "reject")}
    for name, (one, _) in plan.items():
        voted = client.post(f"{url}/votes", headers=first, json={
            "file_id": files[name]["id"], "vote": one, "comment": "looked at it"})
        assert voted.status_code == 200, voted.get_json()
    seen = by_path(client.get(url, headers=second).get_json())
    assert all(seen[n]["votes"] == [] and seen[n]["votes_in"] == 1 for n in plan), \
        "the second reviewer does not see the first's votes"
    assert by_path(client.get(url, headers=alice).get_json())["small.csv"]["votes"] == []
    for name, (_, two) in plan.items():
        assert client.post(f"{url}/votes", headers=second, json={
            "file_id": files[name]["id"], "vote": two}).status_code == 200
    state = client.get(url, headers=second).get_json()
    shown = by_path(state)
    assert len(shown["model.bin"]["votes"]) == 2  # both in: shown
    assert shown["studies.txt"]["conflict"] and shown["studies.txt"]["decision"] is None
    assert state["state"] == "in_review"
    third = auth(token("admin-1", "steward", "admin"))
    stewards = airlock["datasets"].test_client()
    stewards.put("/api/v1/projects/lung/members", headers=airlock["steward"],
                 json={"user_id": "admin-1", "role": "steward"})
    decided = client.post(f"{url}/votes", headers=third, json={
        "file_id": files["studies.txt"]["id"], "vote": "reject"})
    assert decided.status_code == 200 and decided.get_json()["state"] == "approved"

    # Release: the requester alone, approved files only, short-lived links.
    for name in ("notes.txt", "small.csv", "studies.txt", "bundle.tar", "pixels.npy"):
        denied = client.post(f"{url}/files/{files[name]['id']}/link", headers=alice)
        assert denied.status_code == 403, name
    assert client.post(f"{url}/files/{files['model.bin']['id']}/link",
                       headers=first).status_code == 404
    link = client.post(f"{url}/files/{files['model.bin']['id']}/link", headers=alice)
    assert link.status_code == 200, link.get_json()
    target = link.get_json()["url"]
    assert client.get(target, headers=first).status_code == 404  # another account
    got = client.get(target, headers=alice)
    assert got.status_code == 200
    assert hashlib.sha256(got.data).hexdigest() == files["model.bin"]["sha256"] \
        == got.headers["X-Content-SHA256"]
    assert got.data == bytes(range(256)) * 64  # the pinned bytes, not the changed file
    assert client.get(url, headers=alice).get_json()["state"] == "released"

    traces = ledger(airlock, export["id"], {"EXPORT_REQUESTED", "EXPORT_REVIEWED",
                                            "EXPORT_APPROVED", "EXPORT_RELEASED",
                                            "EXPORT_DOWNLOADED"})
    downloaded = traces["EXPORT_DOWNLOADED"]["details"]
    assert downloaded["file_hashes"] == ["sha256:" + files["model.bin"]["sha256"]]
    assert traces["EXPORT_REQUESTED"]["datasets"][0]["hash"] == \
        airlock["dataset"]["content_hash"]


def test_a_link_expires_and_nothing_unapproved_is_served(airlock, token,
                                                         monkeypatch) -> None:
    client = airlock["portal"].test_client()
    alice, job_id = airlock["alice"], airlock["job"]["id"]
    export = client.post("/api/v1/exports", headers=alice, json={
        "title": "Figures", "purpose": "paper", "files": [f"jobs/{job_id}/results.csv"]})
    export = export.get_json()
    url = f"/api/v1/exports/{export['id']}"
    file_id = export["files"][0]["id"]
    assert client.post(f"{url}/files/{file_id}/link", headers=alice).status_code == 403
    for who in ("steward-1", "steward-2"):
        client.post(f"{url}/votes", headers=auth(token(who, "steward")),
                    json={"file_id": file_id, "vote": "approve"})
    monkeypatch.setattr(export_requests, "LINK_SECONDS", -1)
    stale = client.post(f"{url}/files/{file_id}/link", headers=alice).get_json()["url"]
    gone = client.get(stale, headers=alice)
    assert gone.status_code == 410 and gone.get_json()["error"]["code"] == "link_expired"
    forged = stale[:-4] + ("AAAA" if not stale.endswith("AAAA") else "BBBB")
    assert client.get(forged, headers=alice).status_code == 404


@pytest.mark.parametrize("files,code", [
    (["../../etc/passwd"], "bad_path"),
    (["/etc/passwd"], "bad_path"),
    (["jobs/nothing-here.txt"], "not_found"),
], ids=["climbing out", "absolute", "missing"])
def test_a_request_naming_what_is_not_in_persistent_is_refused(airlock, files, code) -> None:
    client = airlock["portal"].test_client()
    answer = client.post("/api/v1/exports", headers=airlock["alice"], json={
        "title": "x", "purpose": "y", "files": files})
    assert answer.status_code in (404, 422) and answer.get_json()["error"]["code"] == code
    assert client.get("/api/v1/exports", headers=airlock["alice"]).get_json()["exports"] == []


def ledger(where: dict[str, Any], request_id: str, wanted: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        found = {t["action"]: t for t in where["auditor"].query(dataset=where["dataset"]["id"])
                 if t["details"].get("request_id") == request_id}
        if wanted <= set(found) or time.monotonic() > deadline:
            assert wanted <= set(found), set(found)
            return found
        time.sleep(0.2)


def test_an_oversized_request_is_refused_and_leaves_nothing(airlock) -> None:
    portal = airlock["portal"]
    portal.extensions["vre.config"] = airlock["config"].model_copy(
        update={"export_max_file_bytes": 1000})
    client = portal.test_client()
    job_id = airlock["job"]["id"]
    answer = client.post("/api/v1/exports", headers=airlock["alice"], json={
        "title": "too much", "purpose": "y", "files": [f"jobs/{job_id}/model.bin"]})
    assert answer.status_code == 413 and answer.get_json()["error"]["code"] == "too_large"
    assert client.get("/api/v1/exports", headers=airlock["alice"]).get_json()["exports"] == []
    store = airlock["config"].home / "exports"
    assert not any(p.is_dir() and p.name.startswith("e") for p in store.iterdir()) \
        if store.exists() else True


def test_a_projects_policy_sets_its_reviewers_threshold_and_allowance(airlock, token) -> None:
    client = airlock["portal"].test_client()
    alice, job_id = airlock["alice"], airlock["job"]["id"]
    policy = "/api/v1/exports/policies/lung"  # by name
    assert client.put(policy, headers=alice, json={"reviewers": 1}).status_code == 403
    set_ = client.put(policy, headers=auth(token("steward-1", "steward")),
                      json={"reviewers": 1, "threshold": 50})
    assert set_.status_code == 200 and set_.get_json()["reviewers"] == 1, set_.get_json()
    assert client.get(policy, headers=alice).get_json()["threshold"] == 50
    export = client.post("/api/v1/exports", headers=alice, json={
        "title": "Figures", "purpose": "paper",
        "files": [f"jobs/{job_id}/results.csv"]}).get_json()
    assert export["reviewers_needed"] == 1
    table = export["files"][0]
    assert table["verdict"] == "flag" and "small_count" in {f["code"] for f in table["findings"]}
    decided = client.post(f"/api/v1/exports/{export['id']}/votes",
                          headers=auth(token("steward-2", "steward")),
                          json={"file_id": table["id"], "vote": "approve"})
    assert decided.get_json()["state"] == "approved"  # one reviewer was enough here

    client.put(policy, headers=auth(token("steward-1", "steward")),
               json={"reviewers": 1, "bytes_per_month": 100})
    over = client.post("/api/v1/exports", headers=alice, json={
        "title": "More", "purpose": "paper", "files": [f"jobs/{job_id}/model.bin"]}).get_json()
    assert over["state"] == "rejected"
    assert "too_large" in {f["code"] for f in over["files"][0]["findings"]}
