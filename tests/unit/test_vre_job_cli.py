"""`vre-job`, the real command over real HTTP, against a stub of the portal's job API.

The stub below stands in for the portal's job API: a small Flask app serving the API's
contract (the job record, its queue estimate, a log that grows, outputs and quota) from an
in-memory dict of jobs. It lets these tests pin down what the command prints, what it sends
and how it exits, with no database. The portal's job API has its own end-to-end tests, which
run this same command against the real portal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request

from batch_tools import cli
from batch_tools.cli import job_exit_code, main
from tests.helpers import free_port, serving

TOKEN = "t0ken"
FINAL = ("succeeded", "failed", "cancelled")
# How a stub job ends, by its command: (state, reason, exit status).
OUTCOMES: dict[str, tuple[str, str, int | None]] = {
    "exit 0": ("succeeded", "", 0),
    "exit 3": ("failed", "", 3),
    "overrun": ("failed", "time_limit", None),
    "hog": ("failed", "out_of_memory", None),
    "lost": ("failed", "node_lost", None),
    "withdrawn": ("cancelled", "cancelled", None),
}
# The log a job writes, in the pieces it writes them; one piece appears per read of its log.
LOG_PIECES = (b"epoch 1 loss=0.9\n", b"\xff\x00 binary \xfe\n", b"epoch 2 loss=0.4\n",
              b"done\n")
LOG_PAGE = 7  # bytes per answer: the command must keep reading, never trust one answer


def _job(job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job_id, "name": body.get("name", ""), "owner_id": "u1", "state": "queued",
        "reason": "", "application": body.get("application"),
        "image": body.get("image", "vre/batch-python:0.1.0"), "image_digest": None,
        "flavor": body.get("flavor", "no-gpu"), "command": body["command"],
        "environment": body.get("environment", {}),
        "time_limit_minutes": body.get("time_limit_minutes", 60),
        "after": body.get("after", []), "desktop_id": None,
        "datasets": [{"id": d, "name": f"set-{d}", "version": "1",
                      "content_hash": f"sha256:{d * 8}"} for d in body.get("datasets", [])],
        "submitted_at": "2025-05-01T10:00:00Z", "started_at": None, "ended_at": None,
        "exit_status": None, "wall_seconds": None, "cpu_seconds": 0.0,
        "memory_peak_bytes": None, "gpus": [], "gpu_hours": 0.0,
        "queue": {"position": 2, "reason": "Resources", "detail": "waiting for 1 GPU",
                  "estimated_start": "2025-05-01T10:30:00Z"},
        "outputs": f"~/persistent/jobs/{job_id}", "output_hash": None,
    }


@dataclass
class JobAPI:
    """The stub's state: jobs by id, their logs, the bodies submitted, and what to refuse."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, bytearray] = field(default_factory=dict)
    pending: dict[str, list[bytes]] = field(default_factory=dict)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    refusal: tuple[int, str, str] | None = None
    down: bool = False
    queries: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        job = _job(f"j{len(self.jobs) + 1:016x}", body) | overrides
        self.jobs[job["id"]] = job
        self.logs[job["id"]] = bytearray()
        self.pending[job["id"]] = list(LOG_PIECES)
        return job

    def advance(self, job: dict[str, Any]) -> None:
        """One step of a job's life per look at it: queued, running, then its outcome."""
        if job["state"] == "queued":
            job.update(state="running", queue=None, started_at="2025-05-01T10:01:00Z",
                       gpus=["0"])
        elif job["state"] == "running":
            self.end(job, OUTCOMES.get(" ".join(job["command"]), OUTCOMES["exit 0"]))

    @staticmethod
    def end(job: dict[str, Any], outcome: tuple[str, str, int | None]) -> None:
        state, reason, status = outcome
        job.update(state=state, reason=reason, exit_status=status,
                   ended_at="2025-05-01T11:02:03Z", wall_seconds=3723.4, gpu_hours=1.0342,
                   output_hash="sha256:" + "ab" * 32)


def stub_portal(api: JobAPI) -> Flask:
    app = Flask("stub-portal")

    def error(status: int, code: str, message: str) -> Response:
        answer = jsonify({"error": {"code": code, "message": message}})
        answer.status_code = status
        return answer

    @app.before_request
    def _guard() -> Response | None:
        if api.down:
            return error(503, "portal_unavailable", "the portal is restarting")
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, "unauthenticated", "a valid bearer token is needed")
        api.queries.append((request.path, dict(request.args)))
        return None

    def find(job_id: str) -> dict[str, Any]:
        if job_id not in api.jobs:
            raise LookupError(job_id)
        return api.jobs[job_id]

    @app.errorhandler(LookupError)
    def _missing(exc: LookupError) -> Response:
        return error(404, "not_found", f"there is no job {exc.args[0]!r}")

    @app.post("/api/v1/jobs")
    def submit() -> Any:
        body = request.get_json()
        api.submitted.append(body)
        if api.refusal:
            return error(*api.refusal)
        if body.get("dry_run"):
            return {"dry_run": True, "job": _job("", body) | {"id": None}}
        with api.lock:
            return api.add(body), 201

    @app.get("/api/v1/jobs")
    def listed() -> Any:
        ended = request.args["state"] == "ended"
        jobs = [j for j in api.jobs.values() if (j["state"] in FINAL) == ended]
        return {"jobs": jobs[:int(request.args.get("limit", 100))]}

    @app.get("/api/v1/jobs/<job_id>")
    def one(job_id: str) -> Any:
        with api.lock:
            job = find(job_id)
            api.advance(job)
            return job

    @app.get("/api/v1/jobs/<job_id>/logs")
    def logs(job_id: str) -> Response:
        with api.lock:
            job, log, pending = find(job_id), api.logs[job_id], api.pending[job_id]
            # The state is read before the bytes, as the portal does: a final state with no
            # bytes means the log is complete.
            state = job["state"]
            offset = int(request.args.get("offset", 0))
            page = bytes(log[offset:offset + LOG_PAGE])
            if not page and pending:  # the reader caught up: the job writes its next piece
                job["state"] = "running"
                log += pending.pop(0)
                if not pending:
                    api.end(job, OUTCOMES["exit 0"])
            return Response(page, mimetype="application/octet-stream", headers={
                "X-Next-Offset": str(offset + len(page)), "X-Job-State": state})

    @app.post("/api/v1/jobs/<job_id>/cancel")
    def cancel(job_id: str) -> Any:
        job = find(job_id)
        if job["state"] not in FINAL:
            job.update(state="cancelled", reason="cancelled", queue=None)
        return job

    @app.get("/api/v1/jobs/<job_id>/outputs")
    def outputs(job_id: str) -> Any:
        job = find(job_id)
        return {"folder": job["outputs"], "manifest_hash": "sha256:" + "cd" * 32, "files": [
            {"path": "model.pt", "size": 1048576, "sha256": "sha256:" + "01" * 32},
            {"path": "metrics/loss.csv", "size": 213, "sha256": "sha256:" + "02" * 32}]}

    @app.get("/api/v1/flavors")
    def flavors() -> Any:
        return [{"name": "no-gpu", "cpus": 2, "memory_mib": 4096, "gpus": 0, "gpu_model": None,
                 "max_runtime_minutes": 1440, "usable": True}]

    @app.get("/api/v1/applications")
    def applications() -> Any:
        return [{"id": "pytorch", "kind": "batch", "image": "vre/batch-pytorch:0.1.0",
                 "image_digest": None, "name": "PyTorch"}]

    @app.get("/api/v1/quota")
    def quota() -> Any:
        projects = [{"project": p, "limits": {"max_jobs": 10},
                     "usage": {"desktops": 0, "jobs": 7, "gpus": 0, "cpu_hours": 1,
                               "gpu_hours": 0}} for p in request.args.getlist("project")]
        return {"limits": {"max_desktops": 2, "max_jobs": 4, "max_gpus": None,
                           "cpu_hours_per_month": 500, "gpu_hours_per_month": 20.5},
                "usage": {"desktops": 1, "jobs": 5, "gpus": 1, "cpu_hours": 12.25,
                          "gpu_hours": 3}, "projects": projects}

    return app


@pytest.fixture
def api() -> JobAPI:
    return JobAPI()


@pytest.fixture
def vre_job(api: JobAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run `vre-job` against the stub: `vre_job("queue", "--json")` gives its exit status."""
    monkeypatch.setattr(cli, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(cli, "WAIT_MAX_SECONDS", 0.02)
    monkeypatch.delenv("VRE_API_SOCKET", raising=False)
    with serving(stub_portal(api)) as url:
        yield lambda *argv: main(["--portal", url, "--token", TOKEN, *argv])


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_submit_sends_only_what_was_given_and_prints_the_job_id(vre_job, api, capsys) -> None:
    assert vre_job("submit", "--flavor", "small-gpu", "--app", "pytorch", "--name", "train",
                   "--env", "SEED=1", "--env", "MODE=a=b", "--time", "90", "--after", "j1",
                   "--after", "j2", "--idempotency-key", "k-1", "--dataset", "7",
                   "--", "python", "-m", "train", "--epochs", "3") == 0
    assert api.submitted == [{
        "command": ["python", "-m", "train", "--epochs", "3"], "flavor": "small-gpu",
        "application": "pytorch", "name": "train", "environment": {"SEED": "1", "MODE": "a=b"},
        "time_limit_minutes": 90, "after": ["j1", "j2"], "idempotency_key": "k-1",
        "datasets": ["7"]}]
    assert capsys.readouterr().out == f"{next(iter(api.jobs))}\n"
    assert vre_job("submit", "--", "true") == 0
    assert api.submitted[-1] == {"command": ["true"]}  # the portal's defaults apply


def test_submit_as_json_prints_the_whole_job(vre_job, api, capsys) -> None:
    assert vre_job("submit", "--image", "vre/batch-python:0.1.0", "--json", "--", "true") == 0
    job = json.loads(capsys.readouterr().out)
    assert job == next(iter(api.jobs.values()))
    assert job["image"] == "vre/batch-python:0.1.0" and job["state"] == "queued"


@pytest.mark.parametrize(("command", "status"), [
    ("exit 0", 0), ("exit 3", 3), ("overrun", 124), ("hog", 137), ("withdrawn", 130),
    ("lost", 1)])
def test_submit_wait_exits_as_the_job_ended(vre_job, api, capsys, command, status) -> None:
    assert vre_job("submit", "--wait", "--", *command.split()) == status
    job_id = next(iter(api.jobs))
    assert capsys.readouterr().out == f"{job_id}\n"  # the id, then nothing while it runs
    assert api.jobs[job_id]["state"] in FINAL


def test_submit_wait_as_json_prints_the_job_as_it_ended(vre_job, capsys) -> None:
    assert vre_job("submit", "--wait", "--json", "--", "overrun") == 124
    job = json.loads(capsys.readouterr().out)
    assert (job["state"], job["reason"], job["exit_status"]) == ("failed", "time_limit", None)


@pytest.mark.parametrize(("job", "status"), [
    ({"state": "succeeded", "exit_status": 0}, 0),
    ({"state": "failed", "exit_status": 2}, 2),
    ({"state": "failed", "exit_status": 0}, 1),
    ({"state": "failed", "exit_status": 143, "reason": "time_limit"}, 124),
    ({"state": "failed", "exit_status": 137, "reason": "out_of_memory"}, 137),
    ({"state": "cancelled", "exit_status": 143, "reason": "cancelled"}, 130),
    ({"state": "failed", "exit_status": None, "reason": "node_lost"}, 1)])
def test_a_final_job_decides_the_exit_status(job, status) -> None:
    assert job_exit_code(job) == status


def test_dry_run_says_what_would_happen_and_submits_nothing(vre_job, api, capsys) -> None:
    assert vre_job("submit", "--dry-run", "--flavor", "small-gpu", "--dataset", "7", "--",
                   "python", "x.py") == 0
    assert api.submitted[-1]["dry_run"] is True and api.jobs == {}
    out = capsys.readouterr().out
    assert "dry run:" in out and "would wait in the queue; nothing was submitted" in out
    assert "queue position:  2" in out and "Resources - waiting for 1 GPU" in out
    assert "estimated start: 2025-05-01T10:30:00Z" in out
    assert "dataset:         set-7 version 1 sha256:77777777" in out
    assert vre_job("submit", "--dry-run", "--json", "--", "true") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["dry_run"] is True and answer["job"]["queue"]["position"] == 2


def test_queue_lists_waiting_and_running_jobs_in_the_apis_order(vre_job, api, capsys) -> None:
    waiting = api.add({"command": ["a"], "name": "prep"})
    running = api.add({"command": ["b"], "name": "train", "flavor": "small-gpu"})
    api.advance(running)
    api.end(api.add({"command": ["c"]}), OUTCOMES["exit 0"])
    assert vre_job("queue") == 0
    assert _rows(capsys.readouterr().out) == [
        ["JOB", "NAME", "STATE", "FLAVOR", "POSITION", "REASON", "ESTIMATED", "START"],
        [waiting["id"], "prep", "queued", "no-gpu", "2", "Resources", "2025-05-01T10:30:00Z"],
        [running["id"], "train", "running", "small-gpu", "-", "2025-05-01T10:01:00Z"]]
    assert vre_job("queue", "--json") == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [waiting["id"],
                                                                      running["id"]]


def test_show_gives_the_job_as_key_value_lines(vre_job, api, capsys) -> None:
    job = api.add({"command": ["python", "-c", "print('hi there')"], "name": "train",
                   "datasets": ["7"], "environment": {"SEED": "1"}})
    api.end(job, OUTCOMES["overrun"])
    job.update(gpus=["0", "1"], memory_peak_bytes=3 * 2**30, cpu_seconds=65.2)
    assert vre_job("show", job["id"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    lines = {key: value.strip() for key, value in lines.items()}
    assert lines["job"] == job["id"] and lines["state"] == "failed (time_limit)"
    assert lines["command"] == "python -c 'print('\"'\"'hi there'\"'\"')'"
    assert lines["dataset"] == "set-7 version 1 sha256:77777777"
    assert lines["exit status"] == "-" and lines["wall time"] == "1:02:03"
    assert lines["cpu time"] == "0:01:05" and lines["memory peak"] == "3072.0 MiB"
    assert lines["gpus"] == "0,1" and lines["environment"] == "SEED=1"
    assert lines["outputs"] == f"~/persistent/jobs/{job['id']}"
    assert lines["output hash"] == "sha256:" + "ab" * 32
    assert vre_job("show", job["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "time_limit"


def test_logs_prints_what_is_written_so_far_and_stops(vre_job, api, capsysbinary) -> None:
    job = api.add({"command": ["train"]})
    api.advance(job)
    api.logs[job["id"]] += api.pending[job["id"]].pop(0)
    assert vre_job("logs", job["id"]) == 0
    assert capsysbinary.readouterr().out == LOG_PIECES[0]
    assert job["state"] == "running"


def test_logs_follow_gets_every_byte_of_a_growing_log_until_the_job_ends(
        vre_job, api, capsysbinary) -> None:
    job = api.add({"command": ["train"]})
    assert vre_job("logs", "--follow", job["id"]) == 0
    assert capsysbinary.readouterr().out == b"".join(LOG_PIECES)
    assert job["state"] == "succeeded"
    assert api.queries[-1] == (f"/api/v1/jobs/{job['id']}/logs",
                               {"offset": str(len(b"".join(LOG_PIECES)))})


def test_cancel_says_cancelled_or_the_state_the_job_is_in(vre_job, api, capsys) -> None:
    waiting = api.add({"command": ["a"]})
    done = api.add({"command": ["b"]})
    api.end(done, OUTCOMES["exit 0"])
    assert vre_job("cancel", waiting["id"]) == 0
    assert capsys.readouterr().out == f"cancelled {waiting['id']}\n"
    assert vre_job("cancel", done["id"]) == 0
    assert capsys.readouterr().out == f"{done['id']} succeeded\n"
    assert vre_job("cancel", done["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "succeeded"


def test_history_lists_ended_jobs_with_their_use(vre_job, api, capsys) -> None:
    for command in ("exit 3", "exit 0", "hog"):
        api.end(api.add({"command": command.split(), "name": "n"}), OUTCOMES[command])
    api.add({"command": ["still", "waiting"]})
    assert vre_job("history", "--limit", "2") == 0
    first, second = list(api.jobs)[:2]
    assert _rows(capsys.readouterr().out) == [
        ["JOB", "NAME", "STATE", "EXIT", "WALL", "GPU-HOURS", "ENDED"],
        [first, "n", "failed", "3", "1:02:03", "1.03", "2025-05-01T11:02:03Z"],
        [second, "n", "succeeded", "0", "1:02:03", "1.03", "2025-05-01T11:02:03Z"]]
    assert vre_job("history", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_outputs_lists_files_with_hashes_then_folder_and_manifest(vre_job, api, capsys) -> None:
    job = api.add({"command": ["a"]})
    assert vre_job("outputs", job["id"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[:3] == [["PATH", "SIZE", "SHA256"],
                        ["model.pt", "1048576", "sha256:" + "01" * 32],
                        ["metrics/loss.csv", "213", "sha256:" + "02" * 32]]
    assert rows[3:] == [["folder:", f"~/persistent/jobs/{job['id']}"],
                        ["manifest", "hash:", "sha256:" + "cd" * 32]]
    assert vre_job("outputs", job["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out)["manifest_hash"] == "sha256:" + "cd" * 32


def test_quota_shows_limits_use_and_what_is_left(vre_job, capsys) -> None:
    assert vre_job("quota") == 0
    assert _rows(capsys.readouterr().out) == [
        ["ACCOUNT", "MEASURE", "LIMIT", "USED", "LEFT"], ["you", "desktops", "2", "1", "1"],
        ["you", "jobs", "4", "5", "0"], ["you", "gpus", "unlimited", "1", "-"],
        ["you", "cpu", "hours", "this", "month", "500", "12.25", "487.75"],
        ["you", "gpu", "hours", "this", "month", "20.5", "3", "17.5"]]
    assert vre_job("quota", "--json") == 0
    assert json.loads(capsys.readouterr().out)["limits"]["max_gpus"] is None


def test_quota_shows_each_projects_account_after_yours(vre_job, capsys) -> None:
    assert vre_job("quota", "--project", "lung") == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 11
    assert rows[7] == ["project", "lung", "jobs", "10", "7", "3"]
    assert rows[8] == ["project", "lung", "gpus", "unlimited", "0", "-"]


def test_submit_names_the_projects_the_job_is_for(vre_job, api, capsys) -> None:
    assert vre_job("submit", "--project", "lung", "--project", "heart", "--", "true") == 0
    assert api.submitted[-1]["project"] == ["lung", "heart"]
    assert vre_job("submit", "--", "true") == 0
    assert "project" not in api.submitted[-1]


def test_a_refusal_is_one_line_with_its_code_and_exit_1(vre_job, api, capsys) -> None:
    api.refusal = (409, "quota_jobs", "you already have 4 jobs, your limit")
    assert vre_job("submit", "--", "true") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "vre-job: you already have 4 jobs, your limit (quota_jobs)\n"
    assert vre_job("show", "jnothere") == 1
    assert capsys.readouterr().err == "vre-job: there is no job 'jnothere' (not_found)\n"


def test_a_portal_failing_on_its_side_exits_3(vre_job, api, capsys) -> None:
    api.down = True
    assert vre_job("quota") == 3
    assert capsys.readouterr().err == "vre-job: the portal is restarting (portal_unavailable)\n"


def test_a_portal_that_cannot_be_reached_exits_3(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--portal", url, "--token", TOKEN, "queue"]) == 3
    assert capsys.readouterr().err == (
        "vre-job: the portal service could not be reached (portal_unavailable)\n")


@pytest.mark.parametrize("argv", [
    ["submit", "--env", "SEED", "--", "true"],
    ["submit", "--flavor", "small"],
    ["submit", "--app", "pytorch", "--image", "x", "--", "true"],
    ["submit", "--time", "soon", "--", "true"],
    ["history", "--limit", "0"],
    ["flavors", "--kind", "cluster"],
    ["logs"]])
def test_bad_usage_exits_2_before_calling_the_portal(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--portal", "http://127.0.0.1:9", "--token", TOKEN, *argv])
    assert exit_.value.code == 2
    assert "usage: vre-job" in capsys.readouterr().err


def test_apps_is_applications_and_flavors_asks_for_a_kind(vre_job, api, capsys) -> None:
    assert vre_job("apps", "--kind", "batch", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "pytorch"
    assert vre_job("flavors", "--kind", "desktop") == 0
    assert _rows(capsys.readouterr().out)[1][0] == "no-gpu"
    assert vre_job("flavors") == 0
    assert api.queries == [("/api/v1/applications", {"kind": "batch"}),
                           ("/api/v1/flavors", {"kind": "desktop"}),
                           ("/api/v1/flavors", {})]  # the portal's default: job flavors
