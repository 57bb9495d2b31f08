"""The ingestion API: who may start it, where from, and the report it gives."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask

import dataset_service.app
from dataset_service import cli
from dataset_service.demo import DemoSpec, generate_demo_data, write_faulty_examples
from dataset_service.models import Base
from tests.dataset_helpers import DATASET
from tests.helpers import auth, serving
from tracer.client import TracerClient
from vre.config import Config, ConfigError
from vre.db import Database, alembic_config
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


def drop_folder(app: Flask, project: str = "lung") -> Path:
    folder = app.extensions["vre.config"].import_root_path / project
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_steward_ingests_from_the_drop_folder_and_reads_the_report(
        service: Flask, steward: dict[str, str]) -> None:
    config = service.extensions["vre.config"]
    assert config.import_root_path == config.home / "import", "inside the data directory"
    summary = generate_demo_data(drop_folder(service) / "batch-1",
                                 DemoSpec(seed=3, subjects=2, slices_per_series=(3, 4)))
    make_project(service, steward)
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": "batch-1", "project": "lung"})
    assert response.status_code == 202, response.get_json()
    run = wait_finished(service, steward, response.get_json()["id"])
    assert run["state"] == "finished"
    assert run["source"] == "batch-1", "shown as the steward named it, not where it lies"
    assert run["counts"]["studies_ingested"] == summary.studies
    assert run["counts"]["files_ingested"] == summary.instances
    assert run["quarantine"] == []
    # The drop folder itself, and an absolute path inside it, are the same place.
    for path in (".", str(drop_folder(service) / "batch-1")):
        again = service.test_client().post("/api/v1/ingest", headers=steward, json={
            "path": path, "project": "lung"})
        assert again.status_code == 202, again.get_json()
        wait_finished(service, steward, again.get_json()["id"])


def test_quarantine_reports_name_files_within_the_drop_folder(
        service: Flask, steward: dict[str, str]) -> None:
    batch = drop_folder(service) / "faulty"
    write_faulty_examples(batch)
    make_project(service, steward)
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": "faulty", "project": "lung"})
    run = wait_finished(service, steward, response.get_json()["id"])
    assert run["quarantine"], run
    home = str(service.extensions["vre.config"].home)
    assert home not in json.dumps(run), "no server path in the report"
    assert all(e["path"].startswith("faulty/") for e in run["quarantine"]), run["quarantine"]


def test_a_clinical_table_that_is_a_link_is_refused(
        service: Flask, steward: dict[str, str], token: Callable[..., str]) -> None:
    make_project(service, steward)
    make_project(service, steward, "brain")
    theirs = drop_folder(service, "brain")
    (theirs / "clinical.csv").write_text("subject_id,age\nS1,40\n")
    mine = drop_folder(service) / "linked"
    generate_demo_data(mine, DemoSpec(seed=5, subjects=1, slices_per_series=(3, 3)))
    (mine / "clinical.csv").unlink()
    (mine / "clinical.csv").symlink_to(theirs / "clinical.csv")
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": "linked", "project": "lung"})
    run = wait_finished(service, steward, response.get_json()["id"])
    assert [(e["path"], e["reason"]) for e in run["quarantine"]] == [
        ("linked/clinical.csv", "malformed_clinical_data")]
    assert run["counts"]["subjects_with_clinical_data"] == 0


def test_only_the_projects_stewards_may_ingest(service: Flask, steward: dict[str, str],
                                               token: Callable[..., str]) -> None:
    make_project(service, steward)
    drop_folder(service)
    client = service.test_client()
    other = auth(token("steward-2", "steward"))
    response = client.post("/api/v1/ingest", headers=other, json={
        "path": ".", "project": "lung"})
    assert response.status_code == 404, "not a member: the project is not even confirmed"
    assert response.get_json()["error"]["field"] == "project"
    assert client.put("/api/v1/projects/lung/members", headers=steward, json={
        "user_id": "steward-2", "role": "researcher"}).status_code == 200
    response = client.post("/api/v1/ingest", headers=other, json={
        "path": ".", "project": "lung"})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "not_a_steward"
    # Refused before the path is looked at: a non-steward learns nothing of the folder.
    missing = client.post("/api/v1/ingest", headers=other, json={
        "path": "no-such-folder", "project": "lung"})
    assert missing.status_code == 403


@pytest.fixture
def two_projects(service: Flask, steward: dict[str, str], token: Callable[..., str]
                 ) -> dict[str, Path]:
    """Project lung (steward-1) and project brain (steward-2), each with a folder of files
    in its drop folder, and links in lung's folder that point out of it."""
    make_project(service, steward)
    make_project(service, auth(token("steward-2", "steward")), "brain")
    config = service.extensions["vre.config"]
    lung, brain = drop_folder(service), drop_folder(service, "brain")
    (brain / "scans").mkdir()
    (lung / "scans").mkdir()
    config.repository_path.mkdir(parents=True, exist_ok=True)
    (config.home.parent / "outside").mkdir(exist_ok=True)
    (lung / "to-brain").symlink_to(brain / "scans")
    (lung / "to-repository").symlink_to(config.repository_path)
    (lung / "to-home").symlink_to(config.home)
    (lung / "loop").symlink_to(lung / "loop")
    return {"lung": lung, "brain": brain, "home": config.home,
            "repository": config.repository_path}


@pytest.mark.parametrize("path", [
    "/etc", "../brain/scans", "../brain", "..", "../..", "../../repository", "to-brain",
    "to-repository", "to-home", "loop", "no-such-folder", "scans/../../brain/scans",
    "{brain}/scans", "{repository}", "{home}", "{home}/../outside", "~", "scans/\u00e9t\u00e9",
])
def test_every_path_outside_the_projects_drop_folder_answers_one_404(
        service: Flask, steward: dict[str, str], two_projects: dict[str, Path],
        path: str) -> None:
    given = path.format(**{k: str(v) for k, v in two_projects.items()})
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": given, "project": "lung"})
    assert response.status_code == 404, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("source_not_found", "path")
    # Missing, outside and forbidden read alike: only the caller's own words come back.
    assert error["message"].replace(repr(given), "<path>", 1) == NOT_FOUND


NOT_FOUND = ("no folder <path> in the project's drop folder (paths are relative to it; "
             "the drop folders lie under VRE_IMPORT_ROOT)")


@pytest.mark.parametrize("path,code", [
    ("a" * 4096, "path_too_long"),
    ("x/" * 2047 + "x", "path_too_long"),
    ("b" * 256, "path_too_long"),
    ("scans\x00/etc", "invalid_character"),  # refused for every field, before the path
    ("scans\n", "invalid_path"),
    ("\ud800", "validation_error"),  # the schema already refuses what is not text
])
def test_paths_no_file_system_holds_are_422_not_500(
        service: Flask, steward: dict[str, str], two_projects: dict[str, Path], path: str,
        code: str) -> None:
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": path, "project": "lung"})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["field"] == "path"


def test_an_import_root_over_the_data_directory_stops_start(
        make_app: Callable[[str], Flask], config: Config) -> None:
    for root in (config.home, config.home.parent, config.repository_path / "blobs"):
        moved = config.model_copy(update={"import_root": root})
        with pytest.raises(ConfigError) as refused:
            dataset_service.app.create_app(moved)
        assert refused.value.key == "VRE_IMPORT_ROOT"


def test_a_missing_import_root_names_the_setting(
        service: Flask, steward: dict[str, str]) -> None:
    make_project(service, steward)
    service.extensions["vre.config"].import_root_path.rmdir()
    response = service.test_client().post("/api/v1/ingest", headers=steward, json={
        "path": ".", "project": "lung"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "import_root_unavailable"
    assert "VRE_IMPORT_ROOT" in response.get_json()["error"]["message"]


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


def test_projects_and_their_members_are_seen_by_members_and_administrators_only(
        service: Flask, steward: dict[str, str], token: Callable[..., str]) -> None:
    client = service.test_client()
    lung = make_project(service, steward)
    brain = make_project(service, auth(token("steward-2", "steward")), "brain")
    client.put("/api/v1/projects/lung/members", headers=steward,
               json={"user_id": "r-1", "role": "researcher"})
    member, outsider = auth(token("r-1", "researcher")), auth(token("r-9", "researcher"))

    def names(headers: dict[str, str]) -> list[str]:
        response = client.get("/api/v1/projects", headers=headers)
        assert response.status_code == 200
        return [p["name"] for p in response.get_json()]

    assert names(member) == ["lung"] and names(steward) == ["lung"]
    assert names(outsider) == []
    assert names(auth(token("admin-1", "admin"))) == ["brain", "lung"]
    assert names(auth(token("service:portal", "service"))) == ["brain", "lung"]
    assert client.get(f"/api/v1/projects/{lung}", headers=member).status_code == 200
    assert client.get(f"/api/v1/projects/{lung}", headers=auth(token("a", "admin"))
                      ).status_code == 200
    # A project the caller may not see answers exactly as one that does not exist.
    for path in (f"/api/v1/projects/{brain}", "/api/v1/projects/brain/members",
                 f"/api/v1/projects/{brain}/members"):
        hidden = client.get(path, headers=member)
        absent = client.get(path.replace("brain", "nope").replace(brain, "nope"),
                            headers=member)
        assert hidden.status_code == absent.status_code == 404
        assert json.dumps(hidden.get_json()).replace(brain, "nope").replace(
            "brain", "nope") == json.dumps(absent.get_json())
    for method, path in (("PUT", "/api/v1/projects/brain/members"),
                         ("DELETE", "/api/v1/projects/brain/members/steward-2")):
        refused = client.open(path, method=method, headers=steward,
                              json={"user_id": "r-1", "role": "steward"})
        assert refused.status_code == 404, "a steward of another project: not even 403"
    assert client.get("/api/v1/projects/lung/members", headers=outsider).status_code == 404
    assert client.get("/api/v1/projects", headers={}).status_code == 401


def test_the_command_line_links_a_folder_into_the_drop_folder_and_ingests_it(
        service: Flask, steward: dict[str, str], token: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    make_project(service, steward)
    config = service.extensions["vre.config"]
    export = tmp_path / "scanner-export"
    summary = generate_demo_data(export, DemoSpec(seed=8, subjects=1, slices_per_series=(3, 3)))
    argv = ["ingest", str(export), "--project", "lung", "--home", str(config.home),
            "--token", token("steward-1", "steward")]
    with serving(service) as url:
        monkeypatch.setenv("VRE_DATASET_URL", url)
        assert cli.main(argv) == 0
        assert f"{summary.studies} studies in" in capsys.readouterr().out
        placed = config.import_root_path / "lung" / "scanner-export"
        for original in summary.files:
            copy = placed / original.relative_to(export)
            assert copy.stat().st_ino == original.stat().st_ino, "linked, not copied"
        # Again: the folder is already there, and so are its studies.
        assert cli.main(argv) == 0
        assert f"{summary.studies} already there" in capsys.readouterr().out
        # A folder already in the drop folder is named as it lies there.
        assert cli.main([*argv[:1], str(placed), *argv[2:]]) == 0
        assert "ingesting scanner-export from" in capsys.readouterr().err


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/api/v1/projects/{p}/members", None),
    ("PUT", "/api/v1/projects/{p}/members", {"user_id": "r-1", "role": "steward"}),
    ("DELETE", "/api/v1/projects/{p}/members/steward-1", None),
    ("POST", "/api/v1/ingest", {"path": ".", "project": "{p}"}),
    ("GET", "/api/v1/studies?project={p}", None),
    ("POST", "/api/v1/datasets", {**DATASET, "project": "{p}"}),
])
def test_a_steward_of_another_project_meets_it_as_one_that_does_not_exist(
        service: Flask, steward: dict[str, str], token: Callable[..., str], method: str,
        path: str, body: dict | None) -> None:
    make_project(service, steward)
    drop_folder(service)
    other = auth(token("steward-2", "steward"))
    make_project(service, other, "brain")

    def call(project: str) -> dict:
        given = json.loads(json.dumps(body).replace("{p}", project)) if body else None
        response = service.test_client().open(path.format(p=project), method=method,
                                              headers=other, json=given)
        assert response.status_code == 404, response.get_json()
        return response.get_json()

    assert json.dumps(call("lung")).replace("lung", "nope") == json.dumps(call("nope"))


def test_no_server_path_is_stored_returned_or_logged(
        service: Flask, steward: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a run refuses, nothing of where the drop folder lies on the host reaches the
    database (a dump of every table), the answers or the logs: a copy of the database, a
    report or a log line shared with a steward must not map the host."""
    make_project(service, steward)
    batch = drop_folder(service) / "faulty"
    write_faulty_examples(batch)
    (batch / "clinical.csv").write_text("subject_id,name\nS1,Jane Doe\n")
    home = str(service.extensions["vre.config"].home)
    with caplog.at_level("DEBUG"):
        response = service.test_client().post("/api/v1/ingest", headers=steward, json={
            "path": str(batch), "project": "lung"})
        assert response.status_code == 202, response.get_json()
        run = wait_finished(service, steward, response.get_json()["id"])
    assert run["quarantine"] and run["source"] == "faulty", run
    assert home not in json.dumps(run) and home not in response.get_data(as_text=True)
    assert not [r.getMessage() for r in caplog.records if home in r.getMessage()
                or home in json.dumps(getattr(r, "__dict__", {}), default=str)]
    db = service.extensions["vre.db"]
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                assert home not in json.dumps(list(row), default=str), (table.name, row)


def test_runs_stored_with_host_paths_are_made_relative(config: Config) -> None:
    """Rows written before runs were stored relative to the drop folder are rewritten so by
    the migration (the demo's folder, outside any drop folder, relative to itself)."""
    db = Database.for_service(config, "dataset_service", "dataset_service:migrations")
    try:
        db.migrate(config, "dataset_service")
        command.downgrade(alembic_config(db.migrations, db.engine), "0008")
        drop = "/srv/vre/import/lung"
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO projects (id, name, title, description, created_by, created_at)"
                " VALUES ('p1', 'lung', 'Lung', '', 'steward-1', CURRENT_TIMESTAMP)"))
            for run_id, source in (("r1", f"{drop}/batch-1"), ("r2", "/opt/demo/in"),
                                   ("r3", drop)):
                conn.execute(sa.text(
                    "INSERT INTO ingest_runs (id, project_id, source, started_by, started_at,"
                    " state, counts) VALUES (:id, 'p1', :source, 'steward-1',"
                    " CURRENT_TIMESTAMP, 'finished', '{}')"), {"id": run_id, "source": source})
            for run_id, path in (("r1", f"{drop}/batch-1/a/1.dcm"), ("r1", "/etc/passwd"),
                                 ("r2", "/opt/demo/in/s1/2.dcm"), ("r3", f"{drop}/x.dcm")):
                conn.execute(sa.text(
                    "INSERT INTO quarantine (ingest_id, path, reason, message)"
                    " VALUES (:run, :path, 'not_dicom', 'not a DICOM file')"),
                    {"run": run_id, "path": path})
        db.migrate(config, "dataset_service")
        with db.engine.connect() as conn:
            sources = dict(conn.execute(sa.text("SELECT id, source FROM ingest_runs")).all())
            paths = sorted(conn.execute(sa.text("SELECT ingest_id, path FROM quarantine")).all())
        assert sources == {"r1": "batch-1", "r2": ".", "r3": "."}
        assert [tuple(p) for p in paths] == [("r1", "batch-1/a/1.dcm"), ("r1", "passwd"),
                                             ("r2", "s1/2.dcm"), ("r3", "x.dcm")]
    finally:
        db.engine.dispose()
