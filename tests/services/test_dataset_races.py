"""Two requests for the same change of one dataset at the same moment, over real HTTP against
the real database (SQLite and PostgreSQL): exactly one wins, the other is refused with 409
and leaves nothing behind (no second trace, no second version, nothing in the outbox)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask

from dataset_service.models import AccessRequest, Dataset, trace_outbox
from tests.dataset_helpers import create
from tests.helpers import auth, serving
from vre.outbox import outbox_of


@contextmanager
def first_writes_meet(engine: sa.Engine, table: str, parties: int) -> Iterator[None]:
    """Hold each request at its first write to `table` until all `parties` requests got
    there: the interleaving in which a check-then-write race shows, every request having
    read the row before any of them changes it. Nothing is replaced: the statements run as
    sent, only their start is lined up (without it, whether the race shows is luck)."""
    barrier = threading.Barrier(parties, timeout=30)
    seen = threading.local()
    write = re.compile(rf'\s*(UPDATE|INSERT INTO)\s+"?{table}"?\s', re.IGNORECASE)

    def line_up(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if write.match(statement) and not getattr(seen, "done", False):
            seen.done = True
            barrier.wait()

    sa.event.listen(engine, "before_cursor_execute", line_up)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", line_up)


def at_once(service: Flask, table: str, *requests: tuple[str, str, dict[str, Any] | None],
            headers: dict[str, str]) -> list[httpx.Response]:
    """Send the requests concurrently to the served service, lined up at their first write."""
    with serving(service) as url, first_writes_meet(service.extensions["vre.db"].engine,
                                                    table, len(requests)):
        def send(request: tuple[str, str, dict[str, Any] | None]) -> httpx.Response:
            method, path, body = request
            return httpx.request(method, url + path, json=body, headers=headers, timeout=60)

        with ThreadPoolExecutor(len(requests)) as pool:
            return list(pool.map(send, requests))


def one_winner(answers: list[httpx.Response], code: str) -> httpx.Response:
    statuses = sorted(a.status_code for a in answers)
    assert statuses in ([200, 409], [201, 409]), [a.text for a in answers]
    loser = next(a for a in answers if a.status_code == 409)
    assert loser.json()["error"]["code"] == code, loser.json()
    return next(a for a in answers if a.status_code != 409)


def settled(service: Flask) -> None:
    """Every committed trace delivered, and none left waiting in the outbox."""
    outbox_of(service).drain()
    with service.extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(trace_outbox)) == 0


@pytest.mark.parametrize("before,action,body,update", [
    ((), "release", None, "RELEASE"),
    (("release",), "publish", None, "PUBLISH"),
    (("release",), "invalidate", {"reason": "labels were wrong"}, "INVALIDATE"),
])
def test_a_transition_sent_twice_at_once_happens_once(platform, steward, before: tuple[str],
                                                      action: str, body: dict | None,
                                                      update: str) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    for earlier in before:
        assert service.test_client().post(f"/api/v1/datasets/{dataset['id']}/{earlier}",
                                          headers=steward).status_code == 200
    path = f"/api/v1/datasets/{dataset['id']}/{action}"
    answers = at_once(service, "datasets", ("POST", path, body), ("POST", path, body),
                      headers=steward)
    winner = one_winner(answers, "wrong_state")
    settled(service)
    updates = [t["details"].get("update") for t in auditor.query(dataset=dataset["id"])]
    assert updates.count(update) == 1, updates
    record = service.test_client().get(f"/api/v1/datasets/{dataset['id']}", headers=steward)
    kept = {k: record.get_json()[k] for k in ("state", "invalidation_reason", "released_at",
                                              "published_at", "invalidated_at")}
    assert kept == {k: winner.json()[k] for k in kept}, "the winner's answer is what was kept"


def test_a_refused_release_leaves_its_tree_to_the_winner(platform, steward) -> None:
    service, _ = platform
    dataset = create(service, steward)
    path = f"/api/v1/datasets/{dataset['id']}/release"
    one_winner(at_once(service, "datasets", ("POST", path, None), ("POST", path, None),
                       headers=steward), "wrong_state")
    tree = service.extensions["dataset.repository"].tree_path(dataset["id"])
    assert (tree / "index.json").is_file(), "the loser's rollback did not take the tree away"


def test_two_next_versions_at_once_make_one(platform, steward) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    assert service.test_client().post(f"/api/v1/datasets/{dataset['id']}/release",
                                      headers=steward).status_code == 200
    path = f"/api/v1/datasets/{dataset['id']}/versions"
    answers = at_once(service, "datasets", ("POST", path, {"version": "2.0"}),
                      ("POST", path, {"version": "2.1"}), headers=steward)
    winner = one_winner(answers, "version_exists").json()
    settled(service)
    with service.extensions["vre.db"].session() as session:
        versions = list(session.scalars(sa.select(Dataset.id).where(
            Dataset.previous_id == dataset["id"])))
        assert versions == [winner["id"]]
        assert session.get(Dataset, dataset["id"]).next_id == winner["id"]
    assert [t["action"] for t in auditor.query(dataset=winner["id"])] == ["CREATE_DATASET"]


def test_an_access_request_decided_twice_at_once_is_decided_once(platform, steward,
                                                                  token) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    client = service.test_client()
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    asked = client.post(f"/api/v1/datasets/{dataset['id']}/requests",
                        headers=auth(token("res-9", "researcher")),
                        json={"purpose": "train a nodule detector"}).get_json()
    answers = at_once(service, "access_requests",
                      ("POST", f"/api/v1/requests/{asked['id']}/approve", {}),
                      ("POST", f"/api/v1/requests/{asked['id']}/reject", {}), headers=steward)
    winner = one_winner(answers, "request_decided").json()
    settled(service)
    with service.extensions["vre.db"].session() as session:
        assert session.get(AccessRequest, asked["id"]).state == winner["state"]
    decisions = [t["action"] for t in auditor.query(dataset=dataset["id"])
                 if t["action"] in ("ACCESS_APPROVED", "ACCESS_REJECTED")]
    assert len(decisions) == 1, decisions
