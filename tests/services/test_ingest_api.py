"""The ingestion API: who may start it, where from, and the report it gives."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from dataset_service.demo import DemoSpec, generate_demo_data
from tests.helpers import auth, serving
from tracer.client import TracerClient
from vre.service_auth import StaticToken


@pytest.fixture
def service(make_app: Callable[[str], Flask], token: Callable[..., str]) -> Iterator[Flask]:
    """The dataset service, tracing into a tracer served over HTTP (ingestion is traced)."""
    app = make_app("dataset_service")
    with serving(make_app("tracer")) as tracer_url:
        app.extensions["dataset.tracer"] = TracerClient(
            tracer_url, StaticToken(token("service:dataset_service", "service")))
        yield app


@pytest.fixture
def steward(token: Callable[..., str]) -> dict[str, str]:
    return auth(token("steward-1", "steward"))


def make_project(app: Flask, headers: dict[str, str], name: str = "lung") -> str:
    response = app.test_client().post("/api/v1/projects", headers=headers,
                                      json={"name": name, "title": name.title()})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def wait_finished(app: Flask, headers: dict[str, str], run_id: str) -> dict:
    for _ in range(300):
        run = app.test_client().get(f"/api/v1/ingest/{run_id}", headers=headers).get_json()
        if run["state"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError("ingestion did not finish")


def test_a_steward_ingests_a_folder_and_reads_the_report(
        service: Flask, steward: dict[str, str]) -> None:
    config = service.extensions["vre.config"]
    summary = generate_demo_data(config.home / "import" / "demo",
                                 DemoSpec(seed=3, subjects=2, slices_per_series=(3, 4)))
    make_project(service, steward)
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": str(config.home / "import" / "demo"), "project": "lung"})
    assert response.status_code == 202, response.get_json()
    run = wait_finished(service, steward, response.get_json()["id"])
    assert run["state"] == "finished"
    assert run["counts"]["studies_ingested"] == summary.studies
    assert run["counts"]["files_ingested"] == summary.instances
    assert run["quarantine"] == []


def test_only_the_projects_stewards_may_ingest(service: Flask, steward: dict[str, str],
                                               token: Callable[..., str]) -> None:
    make_project(service, steward)
    config = service.extensions["vre.config"]
    (config.home / "import").mkdir(parents=True, exist_ok=True)
    other = auth(token("steward-2", "steward"))
    response = service.test_client().post("/api/v1/ingest", headers=other, json={
        "path": str(config.home / "import"), "project": "lung"})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "not_a_steward"
    researcher = auth(token("r-1", "researcher"))
    assert service.test_client().post("/api/v1/ingest", headers=researcher, json={
        "path": str(config.home), "project": "lung"}).status_code == 403


@pytest.mark.parametrize("path,status,code", [
    ("/etc", 403, "source_not_allowed"),
    ("{home}/../outside", 403, "source_not_allowed"),
    ("{home}/no-such-folder", 404, "source_not_found"),
])
def test_folders_outside_the_import_root_are_refused(
        service: Flask, steward: dict[str, str], tmp_path: Path, path: str, status: int,
        code: str) -> None:
    make_project(service, steward)
    home = service.extensions["vre.config"].home
    (home.parent / "outside").mkdir(exist_ok=True)
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": path.format(home=home), "project": "lung"})
    assert response.status_code == status
    assert response.get_json()["error"] == {
        "code": code, "field": "path", "message": response.get_json()["error"]["message"]}


def test_unknown_project_and_run_are_404(service: Flask, steward: dict[str, str]) -> None:
    home = service.extensions["vre.config"].home
    home.mkdir(parents=True, exist_ok=True)
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": str(home), "project": "nope"})
    assert response.status_code == 404 and response.get_json()["error"]["field"] == "project"
    assert service.test_client().get("/api/v1/ingest/nope", headers=steward).status_code == 404


def test_project_members_are_managed_by_stewards(service: Flask, steward: dict[str, str],
                                                 token: Callable[..., str]) -> None:
    make_project(service, steward)
    client = service.test_client()
    added = client.put("/api/v1/projects/lung/members", headers=steward,
                       json={"user_id": "r-1", "role": "researcher"})
    assert added.status_code == 200
    members = client.get("/api/v1/projects/lung/members", headers=steward).get_json()
    assert {(m["user_id"], m["role"]) for m in members} == {("steward-1", "steward"),
                                                           ("r-1", "researcher")}
    researcher = auth(token("r-1", "researcher", "steward"))
    refused = client.put("/api/v1/projects/lung/members", headers=researcher,
                         json={"user_id": "r-2", "role": "steward"})
    assert refused.status_code == 403
    assert client.delete("/api/v1/projects/lung/members/r-1", headers=steward).status_code == 200
    assert client.delete("/api/v1/projects/lung/members/r-1", headers=steward).status_code == 404
