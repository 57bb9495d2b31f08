"""The job pages without a browser: one's jobs listed with their places in the queue (none made
up while the compute agent does not answer), a job's page with its command, data and hashes
escaped, its log and its traces marked as the ledger verifies them (or said unavailable),
cancelling from the form (a second time refused with its reason, never a 500), and nobody but
the owner (or an administrator) seeing a job or its log; anonymous visitors sent to sign in.

Jobs here are rows written straight into the portal's database as `portal.jobs.submit_all` writes
them; running them in sandboxes is tests/sandbox/test_jobs.py's part. Where a page needs the
agent's word (places, log bytes, outputs), a stand-in answers as its client does."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import portal.jobs
import portal.pages_jobs
from portal.compute import ComputeError
from portal.models import Workload
from tests.portal_helpers import post, signed_in
from tracer.client import TracerError
from vre.db import utcnow

HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_ARG = "<script>alert('arg')</script>"
MOUNT = {"dataset_id": "ds-lung", "name": "Lung <b>CT</b>", "version": "3",
         "content_hash": "sha256:" + "ab" * 32, "tree": "/data/lung"}


def a_job(app: Flask, owner: str, job_id: str, state: str = "queued", *,
          name: str = "", command: tuple[str, ...] = ("python", "train.py"),
          mounts: tuple[dict[str, Any], ...] = (), backend_state: dict | None = None,
          **fields: Any) -> str:
    """A job as `portal.jobs.submit_all` queues it (and the agent moves it on)."""
    now = utcnow()
    started = now - timedelta(minutes=3) if state != "queued" else None
    ended = now if state in ("succeeded", "failed", "cancelled") else None
    spec = {"command": list(command), "image": "vre/pytorch:2", "image_digest": None,
            "resources": {"cpus": 4, "memory_mib": 8192, "gpus": 0,
                          "max_runtime_seconds": 3600},
            "environment": {"EPOCHS": "3", "NOTE": "<i>x</i>"},
            "mounts": [dict(m) for m in mounts]}
    with app.extensions["vre.db"].session() as session:
        session.add(Workload(
            id=job_id, owner_id=owner, kind="job", application="pytorch", flavor="no-gpu",
            state=state, reason="", datasets=[m["dataset_id"] for m in mounts], spec=spec,
            backend_state=backend_state or {}, name=name, depends_on=[], gpu_ids=[],
            time_limit_seconds=3600, created_at=now - timedelta(minutes=5),
            started_at=started, ended_at=ended,
            exit_status=0 if state == "succeeded" else None, **fields))
    return job_id


def text(response: Any) -> str:
    return response.get_data(as_text=True)


class StandInAgent:
    """Answers as the compute agent's client does, from what the test gives it."""

    def __init__(self, places: dict[str, dict[str, Any]] | None = None,
                 log: bytes = b"") -> None:
        self.places = places or {}
        self.log = log

    def queue(self, owner: str | None = None) -> dict[str, Any]:
        return self.places

    def logs(self, workload_id: str, offset: int = 0) -> tuple[bytes, int]:
        chunk = self.log[offset:offset + 4096]
        return chunk, offset + len(chunk)

    def outputs(self, workload_id: str) -> dict[str, Any]:
        return {"files": [{"path": "model<1>.pt", "kind": "file", "size": 2048,
                           "sha256": "cd" * 32}],
                "manifest_hash": "ef" * 32, "truncated": False}


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> StandInAgent:
    stand_in = StandInAgent()
    monkeypatch.setattr(portal.jobs, "agent", lambda: stand_in)
    return stand_in


def test_the_list_shows_ones_jobs_with_their_places_in_the_queue(
        site: dict[str, Any], agent: StandInAgent) -> None:
    app = site["portal"]
    a_job(app, "res-1", "jqueued0000000001", name="second in line")
    a_job(app, "res-1", "jrunning000000001", "running")
    a_job(app, "res-1", "jdone000000000001", "succeeded")
    a_job(app, "someone", "jsomeone000000001")
    agent.places = {"jqueued0000000001": {
        "position": 2, "reason": "Resources", "detail": "waiting for 4 CPUs",
        "estimated_start": None}}
    page = text(signed_in(app, "res-1").get("/jobs"))
    assert 'href="/jobs/jqueued0000000001">second in line</a>' in page
    assert "#2" in page and "Resources" in page and "waiting for 4 CPUs" in page
    assert page.index("jrunning000000001") < page.index("jdone000000000001"), \
        "active jobs first"
    assert "jsomeone000000001" not in page
    cancels = re.findall(r'action="/jobs/(\w+)/cancel\?back=list"', page)
    assert cancels == ["jqueued0000000001", "jrunning000000001"], "open jobs only"
    assert 'href="/jobs"' in page, "the navigation names the jobs page"


def test_no_place_is_shown_while_the_agent_does_not_answer(site: dict[str, Any]) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jqueued0000000001")
    page = text(signed_in(app, "res-1").get("/jobs"))
    assert job in page and "queue-place" not in page
    assert "Places in the queue are unknown right now" in page
    detail = text(signed_in(app, "res-1").get(f"/jobs/{job}"))
    assert "Its place in the queue is unknown right now" in detail


def test_the_job_page_shows_everything_escaped(site: dict[str, Any], agent: StandInAgent
                                               ) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jdone000000000001", "succeeded", name=HOSTILE_NAME,
                command=("bash", "-c", HOSTILE_ARG), mounts=(MOUNT,),
                backend_state={"sandbox": "x"}, output_hash="sha256:" + "ef" * 32)
    agent.log = b"epoch 1 <script>log()</script>\n"
    answer = signed_in(app, "res-1").get(f"/jobs/{job}")
    page = text(answer)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    assert "<script>alert" not in page and "<script>log" not in page
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in page
    assert "bash -c &lt;script&gt;alert(&#39;arg&#39;)&lt;/script&gt;" in page
    assert "epoch 1 &lt;script&gt;log()&lt;/script&gt;" in page
    assert "Lung &lt;b&gt;CT&lt;/b&gt;" in page and MOUNT["content_hash"] in page
    assert "EPOCHS" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert "60.0 min" in page and "~/persistent/jobs/jdone000000000001" in page
    assert "model&lt;1&gt;.pt" in page and "cd" * 32 in page and "ef" * 32 in page
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == [], "every script is a file"
    assert "job.js" not in page, "an ended job's log is not followed"


def test_a_running_jobs_log_is_followed_by_the_owner_alone(
        site: dict[str, Any], agent: StandInAgent) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jrunning000000001", "running", backend_state={"sandbox": "x"})
    agent.log = b"line one\nline two\n"
    owner = signed_in(app, "res-1")
    page = text(owner.get(f"/jobs/{job}"))
    assert 'src="/static/job.js"' in page and 'data-offset="18"' in page
    assert 'data-log-url="/jobs/jrunning000000001/log"' in page
    answer = owner.get(f"/jobs/{job}/log?offset=9")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    assert answer.get_data() == b"line two\n"
    assert answer.headers["X-Next-Offset"] == "18" and answer.headers["X-Job-State"] == \
        "running"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert owner.get(f"/jobs/{job}/log?offset=-1").status_code == 400
    for who in ("someone", "steward-1"):
        assert signed_in(app, who).get(f"/jobs/{job}/log").status_code == 404, who
    admin = signed_in(app, "admin-1").get(f"/jobs/{job}/log")
    assert admin.status_code == 200, "administrators see every job, as the API lets them"


def test_a_job_is_its_owners_and_the_administrators(site: dict[str, Any]) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jqueued0000000001")
    assert signed_in(app, "res-1").get(f"/jobs/{job}").status_code == 200
    assert signed_in(app, "admin-1").get(f"/jobs/{job}").status_code == 200
    other = signed_in(app, "someone")
    answer = other.get(f"/jobs/{job}")
    assert answer.status_code == 404
    unknown = other.get("/jobs/jno-such").get_data()
    assert answer.get_data().replace(job.encode(), b"jno-such") == unknown
    assert job not in text(other.get("/jobs"))
    assert post(other, f"/jobs/{job}/cancel").status_code == 404
    with app.extensions["vre.db"].session() as session:
        assert session.get(Workload, job).state == "queued", "nothing was cancelled"


def test_anonymous_visitors_are_sent_to_sign_in(site: dict[str, Any]) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jqueued0000000001")
    anonymous = signed_in(app, None)
    for path in ("/jobs", f"/jobs/{job}", f"/jobs/{job}/log"):
        answer = anonymous.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith(
            "/signin?next="), path
    answer = post(anonymous, f"/jobs/{job}/cancel")
    assert answer.status_code == 302 and "/signin" in answer.headers["Location"]


def test_cancelling_from_the_form_is_traced_and_refused_once_ended(site: dict[str, Any]
                                                                    ) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jqueued0000000001")
    owner = signed_in(app, "res-1")
    assert owner.post(f"/jobs/{job}/cancel").status_code == 400, "CSRF"
    answer = post(owner, f"/jobs/{job}/cancel?back=list")
    assert answer.status_code == 302 and answer.headers["Location"] == "/jobs"
    assert f"Job {job} was cancelled." in text(owner.get("/jobs"))
    with app.extensions["vre.db"].session() as session:
        row = session.get(Workload, job)
        assert (row.state, row.stopped_by) == ("cancelled", "res-1")
    again = post(owner, f"/jobs/{job}/cancel")
    assert again.status_code == 302 and again.headers["Location"] == f"/jobs/{job}"
    page = text(owner.get(again.headers["Location"]))
    assert "job_ended" in page and 'role="alert"' in page
    assert "JOB_CANCELLED" in page and "✓ verified" not in page, "not anchored yet"
    assert site["anchorer"].step().anchored
    assert text(owner.get(f"/jobs/{job}")).count("✓ verified") == 1


def test_a_running_job_whose_agent_is_away_is_refused_with_the_reason(
        site: dict[str, Any]) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jrunning000000001", "running")
    owner = signed_in(app, "res-1")
    answer = post(owner, f"/jobs/{job}/cancel")
    assert answer.status_code == 302
    assert "agent_unavailable" in text(owner.get(answer.headers["Location"]))
    with app.extensions["vre.db"].session() as session:
        assert session.get(Workload, job).state == "running"


def test_the_page_says_so_when_the_ledger_cannot_be_read(
        site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jqueued0000000001", mounts=(MOUNT,))

    class Away:
        def query(self, **filters: Any) -> Any:
            raise TracerError(503, "tracer_unavailable", "the tracer does not answer")

    monkeypatch.setattr(portal.pages_jobs.clients, "tracer", lambda: Away())
    answer = signed_in(app, "res-1").get(f"/jobs/{job}")
    assert answer.status_code == 200 and "Ledger unavailable" in text(answer)


def test_an_agent_error_on_the_log_or_outputs_is_shown_not_raised(
        site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    app = site["portal"]
    job = a_job(app, "res-1", "jdone000000000001", "failed", backend_state={"sandbox": "x"})

    class Broken:
        def logs(self, workload_id: str, offset: int = 0) -> Any:
            raise ComputeError("agent_unavailable", "the agent does not answer")

        outputs = logs

    monkeypatch.setattr(portal.jobs, "agent", lambda: Broken())
    answer = signed_in(app, "res-1").get(f"/jobs/{job}")
    page = text(answer)
    assert answer.status_code == 200
    assert "The log cannot be read right now" in page
    assert "The outputs cannot be listed right now" in page


def test_the_list_counts_no_one_elses_jobs(site: dict[str, Any]) -> None:
    app = site["portal"]
    for n in range(3):
        a_job(app, "someone", f"jsomeone00000000{n}")
    page = text(signed_in(app, "res-1").get("/jobs"))
    assert "No jobs yet" in page
    with app.extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Workload)) == 3
