"""The trace outbox, from the side of what goes wrong: the tracer down, slow or answering
twice, a process killed between commit and delivery, an action that rolls back. The log
must hold exactly the actions that committed, each once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from dataset_service.models import Dataset, trace_outbox
from tests.dataset_helpers import DATASET, create
from tests.helpers import auth, serving
from tracer.client import TracerClient
from vre.config import Config, to_env
from vre.outbox import outbox_of
from vre.service_auth import StaticToken

DEAD_TRACER = "http://127.0.0.1:9"


@pytest.fixture
def config(config: Config) -> Config:
    """Retries within a test's patience; a short bounded wait after each action."""
    return config.model_copy(update={"outbox_retry_seconds": 0.05, "outbox_wait_seconds": 1.0})


def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout} s")
        time.sleep(0.05)


def tracer_as_service(url: str, token: Callable[..., str]) -> TracerClient:
    return TracerClient(url, StaticToken(token("service:dataset_service", "service")))


def history(auditor: TracerClient, dataset_id: str) -> list[tuple[str, str | None]]:
    return [(t["action"], t["details"].get("update")) for t in auditor.query(dataset=dataset_id)]


def outbox_rows(service: Flask) -> list[Any]:
    with service.extensions["vre.db"].session() as session:
        return list(session.execute(sa.select(trace_outbox).order_by(trace_outbox.c.position)))


def test_a_tracer_outage_delays_traces_but_loses_none(platform, steward, token) -> None:
    service, auditor = platform
    working = service.extensions["dataset.tracer"]
    service.extensions["dataset.tracer"] = tracer_as_service(DEAD_TRACER, token)

    dataset = create(service, steward)  # the action does not wait for the tracer
    released = service.test_client().post(
        f"/api/v1/datasets/{dataset['id']}/release", headers=steward
    )
    assert released.status_code == 200, released.get_json()
    assert history(auditor, dataset["id"]) == []
    waiting = outbox_rows(service)
    assert len(waiting) == 2, "both actions committed, their traces wait"
    assert waiting[0].attempts >= 1 and "tracer_unavailable" in waiting[0].last_error

    service.extensions["dataset.tracer"] = working  # the tracer is back
    until(lambda: outbox_of(service).pending() == 0, "delivered")
    assert history(auditor, dataset["id"]) == [
        ("CREATE_DATASET", None),
        ("UPDATE_DATASET", "RELEASE"),
    ]
    ids = [json.loads(row.trace)["id"] for row in waiting]
    assert [t["id"] for t in auditor.query(dataset=dataset["id"])] == ids, "keyed by the outbox"


class SlowTraces:
    """WSGI middleware: the tracer answers the first `slow` appends only after `delay`
    seconds (and stores them meanwhile), as an overloaded tracer would."""

    def __init__(self, app: Any, slow: int, delay: float) -> None:
        self.app, self.slow, self.delay = app, slow, delay
        self.appends = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/api/v1/traces":
            with self.lock:
                self.appends += 1
                late = self.appends <= self.slow
            if late:
                answer = list(self.app(environ, start_response))  # stored now...
                time.sleep(self.delay)  # ...answered after the caller gave up
                return answer
        return self.app(environ, start_response)


def test_a_slow_tracer_does_not_hold_the_action_and_keeps_one_copy(
    make_app, platform, steward, token
) -> None:
    service, auditor = platform
    slow = make_app("tracer")  # the same log, answering late
    slow.wsgi_app = SlowTraces(slow.wsgi_app, slow=2, delay=3)
    with serving(slow) as url:
        service.extensions["dataset.tracer"] = tracer_as_service(url, token)
        dataset = create(service, steward)  # answered although the tracer was not
        until(lambda: outbox_of(service).pending() == 0, "acknowledged")
        assert slow.wsgi_app.appends >= 2, "the trace was sent again"
    assert history(auditor, dataset["id"]) == [("CREATE_DATASET", None)], "and stored once"


def test_a_repeated_key_answers_the_original_entry_even_when_racing(make_app, token) -> None:
    tracer = make_app("tracer")
    service = auth(token("service:dataset_service", "service"))
    trace = {
        "id": str(uuid.uuid4()),
        "actor": "steward-1",
        "action": "CREATE_DATASET",
        "datasets": [{"id": "ds-1"}],
    }
    answers: list[Any] = []
    start = threading.Barrier(6)
    with serving(tracer) as url:
        client = TracerClient(url, StaticToken(service["Authorization"].split()[1]))

        def deliver() -> None:
            start.wait()
            try:
                answers.append(client.record_many([trace]))
            except Exception as exc:  # collected: the assertion below names it
                answers.append(exc)

        threads = [threading.Thread(target=deliver) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        size, entries = client.entries(0)
    assert all(isinstance(a, list) for a in answers), answers
    assert {a[0]["seq"] for a in answers} == {0}, "every delivery gets the original seq"
    assert size == 1 and len(entries) == 1


KILLED_AT_DELIVERY = """
import json, os, signal, sys
from dataset_service.app import create_app

app = create_app()
class Killed:
    def record_many(self, traces, timeout=None):
        os.kill(os.getpid(), signal.SIGKILL)  # after commit, before the tracer heard of it
app.extensions["dataset.tracer"] = Killed()
answer = app.test_client().post("/api/v1/datasets", json=json.loads(sys.argv[1]),
                                headers={"Authorization": "Bearer " + sys.argv[2]})
print("not killed", answer.status_code, answer.get_data(as_text=True))
"""


def test_a_process_killed_after_commit_delivers_after_restart(
    config, make_app, platform, token
) -> None:
    service, auditor = platform
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update(to_env(config))
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_AT_DELIVERY,
            json.dumps(DATASET),
            token("steward-1", "steward"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    with service.extensions["vre.db"].session() as session:
        (dataset_id,) = session.scalars(sa.select(Dataset.id))  # the action committed
    assert len(outbox_rows(service)) == 1 and history(auditor, dataset_id) == []

    restarted = make_app("dataset_service")  # drains what the killed process left
    restarted.extensions["dataset.tracer"] = service.extensions["dataset.tracer"]
    outbox_of(restarted).start()
    until(lambda: outbox_of(restarted).pending() == 0, "delivered after the restart", 60)
    assert history(auditor, dataset_id) == [("CREATE_DATASET", None)]


@pytest.fixture
def failing_release(platform) -> Iterator[None]:
    """The database refuses to keep a release: at commit on PostgreSQL (a deferred
    constraint trigger, like a transaction that timed out), at its last write on SQLite."""
    service, _ = platform
    engine = service.extensions["vre.db"].engine
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse_release() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'release refused at commit'; END $$"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE CONSTRAINT TRIGGER refuse_release AFTER UPDATE ON datasets "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.state = 'released') "
                    "EXECUTE FUNCTION refuse_release()"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_release BEFORE UPDATE OF modified_at ON datasets "
                    "WHEN NEW.state = 'released' BEGIN SELECT RAISE(ABORT, 'release refused'); END"
                )
            )
    yield


def test_a_release_that_rolls_back_leaves_no_trace_and_no_tree(
    platform, steward, failing_release
) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    client = service.test_client()
    client.application.testing = False  # answer the failure as a client would see it
    refused = client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    assert refused.status_code == 500
    record = client.get(f"/api/v1/datasets/{dataset['id']}", headers=steward).get_json()
    assert record["state"] == "draft"
    tree = service.extensions["dataset.repository"].tree_path(dataset["id"])
    assert not tree.exists(), "the rolled-back release left its mount tree on disk"
    assert outbox_rows(service) == []
    assert history(auditor, dataset["id"]) == [("CREATE_DATASET", None)]
