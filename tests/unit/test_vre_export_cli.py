"""`vre-export`, the real command over real HTTP, against a stub of the portal's export API.

The stub below stands in for the portal's export API: a small Flask app serving the API's
contract (export requests with their files, checks, decisions and votes, one-time download
links and the downloads themselves) from an in-memory dict. It lets these tests pin down what
the command sends, prints, saves and how it exits, with no database. The portal's export API
has its own end-to-end tests, which run this same command against the real portal."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request

from batch_tools.export_cli import main
from tests.helpers import free_port, serving

TOKEN = "t0ken"
# The files of the researcher's ~/persistent the stub knows, by their path relative to it.
CONTENT = {"jobs/j123/model.pt": b"weights " * 4096, "tables/counts.csv": b"site,n\na,3\n",
           "../../etc/passwd": b"root:x:0:0\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file(index: int, path: str) -> dict[str, Any]:
    small = path.endswith(".csv")
    return {"id": f"f{index}", "path": path, "size": len(CONTENT[path]),
            "sha256": _sha(CONTENT[path]), "verdict": "flag" if small else "pass",
            "findings": [{"code": "small_count", "severity": "flag",
                          "reason": "a count below 5", "where": "row 2"}] if small else [],
            "decision": None, "votes": []}


@dataclass
class ExportAPI:
    """The stub's state: exports by id, the bodies posted, the links given, and what to do
    wrong (refuse, or serve bytes other than those reviewed)."""

    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    posted: list[dict[str, Any]] = field(default_factory=list)
    links: dict[str, bytes] = field(default_factory=dict)
    refusal: tuple[int, str, str] | None = None
    tampered: bool = False
    expired: bool = False

    def add(self, paths: list[str], submit: bool = True, **overrides: Any) -> dict[str, Any]:
        export_id = f"e{len(self.exports) + 1:016x}"
        export = {
            "id": export_id, "title": "Model", "purpose": "the paper's figures",
            "state": "checking" if submit else "draft", "owner_id": "res-1",
            "project": "lung", "reviewers_needed": 2, "created_at": "2025-05-01T10:00:00Z",
            "submitted_at": "2025-05-01T10:00:01Z" if submit else None, "decided_at": None,
            "datasets": [{"id": "ds-7", "hash": "sha256:" + "77" * 32}],
            "files": [_file(i, p) for i, p in enumerate(paths, 1)]} | overrides
        self.exports[export_id] = export
        return export

    def approve(self, export: dict[str, Any], *file_ids: str) -> None:
        export.update(state="approved", decided_at="2025-05-02T09:00:00Z")
        for file in export["files"]:
            approved = file["id"] in file_ids
            file["decision"] = "approved" if approved else "rejected"
            file["votes"] = [{"reviewer_id": "rev-1", "vote": "approve" if approved else
                              "reject", "comment": "fine" if approved else "", "at":
                              "2025-05-02T08:00:00Z"}]


def stub_portal(api: ExportAPI) -> Flask:
    app = Flask("stub-portal")

    def error(status: int, code: str, message: str) -> Response:
        answer = jsonify({"error": {"code": code, "message": message}})
        answer.status_code = status
        return answer

    @app.before_request
    def _guard() -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, "unauthenticated", "a valid bearer token is needed")
        if api.refusal:
            return error(*api.refusal)
        return None

    def find(export_id: str) -> dict[str, Any]:
        if export_id not in api.exports:
            raise LookupError(export_id)
        return api.exports[export_id]

    @app.errorhandler(LookupError)
    def _missing(exc: LookupError) -> Response:
        return error(404, "not_found", f"there is no export {exc.args[0]!r}")

    @app.post("/api/v1/exports")
    def create() -> Any:
        body = request.get_json()
        api.posted.append(body)
        return api.add(body["files"], submit=body["submit"]), 201

    @app.get("/api/v1/exports")
    def listed() -> Any:
        return {"exports": list(api.exports.values())}

    @app.get("/api/v1/exports/<export_id>")
    def one(export_id: str) -> Any:
        return find(export_id)

    @app.post("/api/v1/exports/<export_id>/submit")
    def submit(export_id: str) -> Any:
        export = find(export_id)
        if export["state"] != "draft":
            return error(409, "not_a_draft", f"export {export_id} is {export['state']}")
        export.update(state="submitted", submitted_at="2025-05-01T11:00:00Z")
        return export

    @app.post("/api/v1/exports/<export_id>/withdraw")
    def withdraw(export_id: str) -> Any:
        return find(export_id) | {"state": "withdrawn"}

    @app.post("/api/v1/exports/<export_id>/files/<file_id>/link")
    def link(export_id: str, file_id: str) -> Any:
        file = next(f for f in find(export_id)["files"] if f["id"] == file_id)
        if file["decision"] != "approved":
            return error(403, "not_approved", f"file {file_id} is not approved")
        token = f"tok{len(api.links)}"
        api.links[token] = CONTENT[file["path"]] + (b"!" if api.tampered else b"")
        return {"url": f"/api/v1/exports/download/{token}", "expires_in": 60,
                "sha256": file["sha256"]}

    @app.get("/api/v1/exports/download/<token>")
    def download(token: str) -> Response:
        if api.expired:
            return error(410, "link_expired", "the link has expired; ask for another")
        return Response(api.links.pop(token), mimetype="application/octet-stream")

    return app


@pytest.fixture
def api() -> ExportAPI:
    return ExportAPI()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A researcher's home with its ~/persistent, as inside a desktop."""
    home = tmp_path / "home"
    for path in CONTENT:
        if not path.startswith(".."):
            (home / "persistent" / path).parent.mkdir(parents=True, exist_ok=True)
            (home / "persistent" / path).write_bytes(CONTENT[path])
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def vre_export(api: ExportAPI, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run `vre-export` against the stub: `vre_export("list", "--json")` gives its exit status."""
    monkeypatch.delenv("VRE_API_SOCKET", raising=False)
    with serving(stub_portal(api)) as url:
        yield lambda *argv: main(["--portal", url, "--token", TOKEN, *argv])


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_request_sends_paths_relative_to_persistent_and_prints_the_checks(
        vre_export, api, home, capsys) -> None:
    assert vre_export("request", "--title", "Model", "--purpose", "the paper's figures",
                      "jobs/j123/model.pt",
                      str(home / "persistent" / "tables" / "counts.csv")) == 0
    assert api.posted == [{"title": "Model", "purpose": "the paper's figures",
                           "files": ["jobs/j123/model.pt", "tables/counts.csv"],
                           "submit": True}]
    export_id = next(iter(api.exports))
    model, counts = CONTENT["jobs/j123/model.pt"], CONTENT["tables/counts.csv"]
    assert _rows(capsys.readouterr().out) == [
        [export_id], ["PATH", "SIZE", "SHA256", "VERDICT", "FINDINGS"],
        ["jobs/j123/model.pt", str(len(model)), _sha(model)[:12], "pass", "-"],
        ["tables/counts.csv", str(len(counts)), _sha(counts)[:12], "flag", "small_count"]]


def test_request_as_a_draft_is_not_submitted_and_json_gives_the_export(
        vre_export, api, capsys) -> None:
    assert vre_export("request", "--title", "T", "--purpose", "P", "--draft", "--json",
                      "tables/counts.csv") == 0
    assert api.posted[-1]["submit"] is False
    assert json.loads(capsys.readouterr().out) == next(iter(api.exports.values()))


@pytest.mark.parametrize("outside", ["/etc/passwd", "../notes.txt", "jobs/../../secret", "."])
def test_a_file_outside_persistent_is_refused_before_asking_the_portal(
        vre_export, api, home, capsys, outside) -> None:
    assert vre_export("request", "--title", "T", "--purpose", "P", "jobs/j123/model.pt",
                      outside) == 2
    assert api.posted == []
    assert capsys.readouterr().err == (
        f"vre-export: {outside} is not a file in {home / 'persistent'}; only files there can "
        "be exported (not_in_persistent)\n")


def test_a_link_out_of_persistent_is_refused(vre_export, api, home, capsys) -> None:
    (home / "persistent" / "escape").symlink_to(home)
    assert vre_export("request", "--title", "T", "--purpose", "P", "escape/.bashrc") == 2
    assert api.posted == [] and "(not_in_persistent)" in capsys.readouterr().err


def test_list_is_a_table_of_the_exports(vre_export, api, capsys) -> None:
    first = api.add(["jobs/j123/model.pt", "tables/counts.csv"], title="Model")
    draft = api.add(["tables/counts.csv"], submit=False, title="Counts")
    assert vre_export("list") == 0
    assert _rows(capsys.readouterr().out) == [
        ["ID", "TITLE", "STATE", "FILES", "SUBMITTED"],
        [first["id"], "Model", "checking", "2", "2025-05-01T10:00:01Z"],
        [draft["id"], "Counts", "draft", "1", "-"]]
    assert vre_export("list", "--json") == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [first["id"], draft["id"]]


def test_show_gives_the_export_its_files_findings_decisions_and_votes(
        vre_export, api, capsys) -> None:
    export = api.add(["jobs/j123/model.pt", "tables/counts.csv"])
    api.approve(export, "f1")
    assert vre_export("show", export["id"]) == 0
    header, model, counts = capsys.readouterr().out.split("\n\n")
    assert "export:           " + export["id"] in header
    assert "purpose:          the paper's figures" in header
    assert f"dataset:          ds-7 sha256:{'77' * 32}" in header
    assert "decided:          2025-05-02T09:00:00Z" in header
    assert model.splitlines() == [
        "file:     f1 jobs/j123/model.pt",
        f"size:     {len(CONTENT['jobs/j123/model.pt'])}",
        f"sha256:   {_sha(CONTENT['jobs/j123/model.pt'])}", "verdict:  pass",
        "decision: approved", "vote:     rev-1 approve: fine (2025-05-02T08:00:00Z)"]
    assert "finding:  small_count: a count below 5 (row 2)" in counts.splitlines()
    assert "decision: rejected" in counts.splitlines()
    assert vre_export("show", export["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out) == export


def test_submit_and_withdraw_say_the_state_the_export_is_in(vre_export, api, capsys) -> None:
    draft = api.add(["tables/counts.csv"], submit=False)
    assert vre_export("submit", draft["id"]) == 0
    assert capsys.readouterr().out == f"{draft['id']} submitted\n"
    assert vre_export("withdraw", draft["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "withdrawn"
    assert vre_export("submit", draft["id"]) == 1
    assert capsys.readouterr().err == (
        f"vre-export: export {draft['id']} is submitted (not_a_draft)\n")


def test_download_saves_the_approved_files_verified_by_their_hash(
        vre_export, api, tmp_path, capsys) -> None:
    export = api.add(["jobs/j123/model.pt", "tables/counts.csv"])
    api.approve(export, "f1")
    out = tmp_path / "results"
    assert vre_export("download", export["id"], "--to", str(out)) == 0
    model = CONTENT["jobs/j123/model.pt"]
    assert capsys.readouterr().out == f"{out / 'model.pt'}  {_sha(model)}\n"
    assert [p.name for p in out.iterdir()] == ["model.pt"]  # the rejected file is not there
    assert (out / "model.pt").read_bytes() == model


def test_download_never_overwrites_a_file_already_there(vre_export, api, tmp_path,
                                                         capsys) -> None:
    export = api.add(["jobs/j123/model.pt"])
    api.approve(export, "f1")
    model = CONTENT["jobs/j123/model.pt"]
    (tmp_path / "model.pt").write_bytes(b"mine")
    assert vre_export("download", export["id"]) == 0  # into the current folder
    assert capsys.readouterr().out == f"model-1.pt  {_sha(model)}\n"
    assert vre_export("download", export["id"], "--file", "f1", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"file_id": "f1", "path": "model-2.pt", "sha256": _sha(model)}]
    assert (tmp_path / "model.pt").read_bytes() == b"mine"
    assert (tmp_path / "model-1.pt").read_bytes() == model
    assert (tmp_path / "model-2.pt").read_bytes() == model


def test_a_path_leading_out_is_saved_by_its_name_inside_the_folder(
        vre_export, api, tmp_path) -> None:
    export = api.add(["../../etc/passwd"])
    api.approve(export, "f1")
    out = tmp_path / "out" / "deep"
    assert vre_export("download", export["id"], "--to", str(out)) == 0
    assert [p.name for p in out.iterdir()] == ["passwd"]
    assert (out / "passwd").read_bytes() == CONTENT["../../etc/passwd"]
    assert not (tmp_path / "etc").exists()


def test_a_download_not_as_reviewed_is_removed_and_exits_1(vre_export, api, tmp_path,
                                                          capsys) -> None:
    export = api.add(["jobs/j123/model.pt"])
    api.approve(export, "f1")
    api.tampered = True
    assert vre_export("download", export["id"], "--to", str(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vre-export: jobs/j123/model.pt arrived with SHA-256 ")
    assert captured.err.endswith(" it was reviewed with; removed (hash_mismatch)\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_link_that_expired_leaves_no_file_behind(vre_export, api, tmp_path, capsys) -> None:
    export = api.add(["jobs/j123/model.pt"])
    api.approve(export, "f1")
    api.expired = True
    assert vre_export("download", export["id"], "--to", str(tmp_path / "out")) == 1
    assert capsys.readouterr().err == (
        "vre-export: the link has expired; ask for another (link_expired)\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_download_with_nothing_approved_exits_1(vre_export, api, capsys) -> None:
    export = api.add(["tables/counts.csv"])
    assert vre_export("download", export["id"]) == 1
    assert capsys.readouterr().err == (
        f"vre-export: export {export['id']} has no approved file (not_approved)\n")
    assert vre_export("download", export["id"], "--file", "f9") == 1
    assert capsys.readouterr().err == (
        f"vre-export: export {export['id']} has no file f9 (not_found)\n")


def test_a_refusal_is_one_line_with_its_code_and_exit_1(vre_export, api, capsys) -> None:
    api.refusal = (403, "forbidden", "exports are not allowed in this project")
    assert vre_export("list") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "vre-export: exports are not allowed in this project (forbidden)\n"


def test_a_portal_that_cannot_be_reached_exits_3(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--portal", url, "--token", TOKEN, "list"]) == 3
    assert capsys.readouterr().err == (
        "vre-export: the portal service could not be reached (portal_unavailable)\n")


@pytest.mark.parametrize("argv", [
    ["request", "--title", "T", "x"], ["request", "--title", "T", "--purpose", "P"],
    ["show"], ["download", "e1", "--to"], ["publish", "e1"]])
def test_bad_usage_exits_2_before_calling_the_portal(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--portal", "http://127.0.0.1:9", "--token", TOKEN, *argv])
    assert exit_.value.code == 2
    assert "usage: vre-export" in capsys.readouterr().err
