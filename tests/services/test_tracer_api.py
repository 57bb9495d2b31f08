"""The tracer's API: durable appends, closed schema, read rules, proofs and checkpoints."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable

import pytest
from flask import Flask

from tests.helpers import auth
from tracer import ledger
from tracer.checkpoints import Checkpoint, CheckpointSigner, load_public_key, verify_checkpoint
from tracer.merkle import verify_consistency, verify_inclusion

HASH = "sha256:" + "ab" * 32


@pytest.fixture
def tracer(make_app: Callable[[str], Flask]) -> Flask:
    return make_app("tracer")


@pytest.fixture
def service(token: Callable[..., str]) -> dict[str, str]:
    return auth(token("service:dataset_service", "service"))


def trace(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {"actor": "user-1", "action": "CREATE_DATASET",
                               "datasets": [{"id": "ds-1", "hash": HASH}]}
    body.update(kw)
    return body


def log_size(app: Flask) -> int:
    from tracer.store import log_size as size

    with app.extensions["vre.db"].session() as session:
        return size(session)


def checkpoint(app: Flask) -> None:
    config = app.extensions["vre.config"]
    with app.extensions["vre.db"].session() as session:
        ledger.make_checkpoint(session, ledger.LogTree(),
                               CheckpointSigner.from_file(config.tracer_key_path),
                               config.ledger_origin)


def test_one_trace_is_stored_with_its_sequence_number(tracer: Flask, service: dict) -> None:
    client = tracer.test_client()
    response = client.post("/api/v1/traces", json=trace(), headers=service)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["seq"] == 0 and body["action"] == "CREATE_DATASET"
    assert len(body["leaf_hash"]) == 64
    again = client.get(f"/api/v1/traces/{body['id']}", headers=service).get_json()
    assert again == body


def test_a_batch_gets_contiguous_sequence_numbers(tracer: Flask, service: dict) -> None:
    client = tracer.test_client()
    client.post("/api/v1/traces", json=trace(), headers=service)
    batch = [trace(actor=f"user-{i}") for i in range(50)]
    response = client.post("/api/v1/traces", json=batch, headers=service)
    assert response.status_code == 201
    acks = response.get_json()["traces"]
    assert [t["seq"] for t in acks] == list(range(1, 51))
    assert set(acks[0]) == {"seq", "id", "leaf_hash"}


def test_retrying_with_the_same_id_is_idempotent(tracer: Flask, service: dict) -> None:
    client = tracer.test_client()
    tid = str(uuid.uuid4())
    first = client.post("/api/v1/traces", json=trace(id=tid), headers=service).get_json()
    second = client.post("/api/v1/traces", json=trace(id=tid), headers=service).get_json()
    assert first == second and log_size(tracer) == 1
    clash = client.post("/api/v1/traces", json=trace(id=tid, actor="other"), headers=service)
    assert clash.status_code == 409
    assert clash.get_json()["error"]["code"] == "trace_id_conflict"


@pytest.mark.parametrize("body,code,field", [
    (trace(action="DELETE_EVERYTHING"), "validation_error", "action"),
    ({"action": "CREATE_DATASET"}, "missing_field", "actor"),
    (trace(patient_name="Doe^Jane"), "unknown_field", "patient_name"),
    (trace(details={"birth_date": "1970-01-01"}), "unknown_field", "details.birth_date"),
    (trace(datasets=[{"id": "ds", "hash": "md5:abc"}]), "validation_error", "datasets.0.hash"),
    (trace(action="UPDATE_DATASET"), "validation_error", None),
    ([trace(), trace(actor="bad actor!")], "validation_error", "1.actor"),
])
def test_bad_traces_are_refused_and_nothing_is_stored(tracer: Flask, service: dict,
                                                      body: object, code: str,
                                                      field: str | None) -> None:
    response = tracer.test_client().post("/api/v1/traces", json=body, headers=service)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code
    if field:
        assert error["field"] == field
    assert log_size(tracer) == 0


def test_only_services_may_record(tracer: Flask, token: Callable[..., str]) -> None:
    response = tracer.test_client().post("/api/v1/traces", json=trace(),
                                         headers=auth(token("user-1", "admin", "auditor")))
    assert response.status_code == 403
    assert log_size(tracer) == 0


def test_oversized_batch_is_refused(tracer: Flask, service: dict) -> None:
    batch = [trace() for _ in range(6000)]
    response = tracer.test_client().post("/api/v1/traces", json=batch, headers=service)
    assert response.status_code == 413
    assert log_size(tracer) == 0


def test_reading_follows_role_and_dataset_visibility(tracer: Flask, service: dict,
                                                     token: Callable[..., str]) -> None:
    client = tracer.test_client()
    mine = client.post("/api/v1/traces", json=trace(actor="alice"), headers=service).get_json()
    client.post("/api/v1/traces", json=trace(actor="bob"), headers=service)
    alice = auth(token("alice", "researcher"))
    own = client.get("/api/v1/traces", headers=alice).get_json()["traces"]
    assert [t["actor"] for t in own] == ["alice"]
    assert client.get(f"/api/v1/traces/{mine['id']}", headers=auth(token("bob"))).status_code \
        == 404
    assert client.get("/api/v1/traces?dataset=ds-1").status_code == 403
    auditor = client.get("/api/v1/traces?dataset=ds-1",
                         headers=auth(token("carol", "auditor"))).get_json()["traces"]
    assert len(auditor) == 2
    client.post("/api/v1/traces", headers=service, json=trace(
        actor="steward-1", action="UPDATE_DATASET", details={"update": "PUBLISH"}))
    public = client.get("/api/v1/traces?dataset=ds-1").get_json()["traces"]
    assert len(public) == 3, "a published dataset's history is public"
    assert client.get(f"/api/v1/traces/{mine['id']}").status_code == 200


def test_a_public_history_shows_what_and_when_but_not_who_or_why(
        tracer: Flask, service: dict, token: Callable[..., str]) -> None:
    client = tracer.test_client()
    client.post("/api/v1/traces", headers=service, json=[
        trace(actor="steward-1"),
        trace(actor="steward-1", action="UPDATE_DATASET", details={"update": "PUBLISH"}),
        trace(actor="alice", action="ACCESS_REQUESTED",
              details={"purpose": "alice's thesis on rare nodules", "request_id": "req-1"}),
        trace(actor="alice", action="USE_DATASETS", details={"workload_id": "desk-1"},
              datasets=[{"id": "ds-1", "hash": HASH}, {"id": "ds-private", "hash": HASH}]),
        trace(actor="steward-1", action="UPDATE_DATASET",
              details={"update": "INVALIDATE", "reason": "labels were wrong"})])
    for caller in ({}, auth(token("mallory", "researcher"))):
        page = client.get("/api/v1/traces?dataset=ds-1", headers=caller)
        assert page.status_code == 200
        shown = page.get_json()["traces"]
        body = page.get_data(as_text=True)
        for secret in ("alice", "steward-1", "thesis", "req-1", "desk-1", "ds-private"):
            assert secret not in body, f"{secret!r} shows in a public history"
        assert [t["action"] for t in shown] == ["CREATE_DATASET", "UPDATE_DATASET",
                                                "ACCESS_REQUESTED", "USE_DATASETS",
                                                "UPDATE_DATASET"]
        assert all(t["redacted"] and t["time"] for t in shown)
        assert shown[-1]["details"] == {"update": "INVALIDATE", "reason": "labels were wrong"}
        assert [d["id"] for d in shown[3]["datasets"]] == ["ds-1"]
        # one person, one stable pseudonym throughout the history; two people, two
        who = [t["actor"] for t in shown]
        assert who[0] == who[1] == who[4] != who[2] == who[3]
        # the same trace alone reads the same, and its proof still names its whole leaf
        one = client.get(f"/api/v1/traces/{shown[3]['id']}", headers=caller).get_json()
        assert one == shown[3]
    again = client.get("/api/v1/traces?dataset=ds-1").get_json()["traces"]
    assert [t["actor"] for t in again] == who, "pseudonyms are stable"
    probe = client.get("/api/v1/traces?dataset=ds-1&actor=alice")
    assert probe.status_code == 403 and probe.get_json()["error"]["code"] == \
        "actor_filter_not_public", "nobody learns whether a person acted on it"
    # the person themselves, auditors and services read the whole trace
    own = client.get(f"/api/v1/traces/{shown[2]['id']}",
                     headers=auth(token("alice", "researcher"))).get_json()
    assert own["actor"] == "alice" and own["details"]["purpose"].startswith("alice's")
    whole = client.get("/api/v1/traces?dataset=ds-1",
                       headers=auth(token("carol", "auditor"))).get_json()["traces"]
    assert whole[3]["actor"] == "alice" and not whole[3]["redacted"]
    assert [d["id"] for d in whole[3]["datasets"]] == ["ds-1", "ds-private"]
    assert [t["leaf_hash"] for t in whole] == [t["leaf_hash"] for t in shown]


def test_listing_paginates_by_cursor(tracer: Flask, service: dict,
                                     token: Callable[..., str]) -> None:
    client = tracer.test_client()
    client.post("/api/v1/traces", json=[trace(actor=f"u{i}") for i in range(25)],
                headers=service)
    auditor = auth(token("carol", "auditor"))
    seen, after = [], -1
    while True:
        page = client.get(f"/api/v1/traces?limit=10&after={after}", headers=auditor).get_json()
        seen += [t["seq"] for t in page["traces"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == list(range(25))
    by_action = client.get("/api/v1/traces?action=JOB_SUBMITTED", headers=auditor).get_json()
    assert by_action["traces"] == []


def test_concurrent_appends_get_unique_contiguous_seqs(tracer: Flask, service: dict) -> None:
    errors: list[object] = []

    def worker() -> None:
        client = tracer.test_client()
        for _ in range(5):
            r = client.post("/api/v1/traces", json=[trace() for _ in range(4)], headers=service)
            if r.status_code != 201:
                errors.append(r.get_json())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    lines = tracer.test_client().get("/api/v1/log/entries?limit=1000",
                                     headers=service).get_data().splitlines()
    assert [int(line.split(b" ", 1)[0]) for line in lines] == list(range(80))


def test_inclusion_proof_verifies_against_the_signed_checkpoint(tracer: Flask,
                                                                service: dict) -> None:
    client = tracer.test_client()
    created = client.post("/api/v1/traces", json=[trace(actor=f"u{i}") for i in range(13)],
                          headers=service).get_json()["traces"]
    before = client.get(f"/api/v1/traces/{created[5]['id']}/proof", headers=service)
    assert before.status_code == 409 and before.get_json()["error"]["code"] == "no_checkpoint"
    checkpoint(tracer)
    listing = client.get("/api/v1/checkpoints").get_json()
    signed = listing["checkpoints"][0]
    cp = Checkpoint.parse(signed["note"].encode())
    verify_checkpoint(cp, base64.b64decode(signed["signature"]),
                      load_public_key(listing["public_key"]))
    proof = client.get(f"/api/v1/traces/{created[5]['id']}/proof", headers=service).get_json()
    assert proof["tree_size"] == 13 and proof["leaf_index"] == 5
    verify_inclusion(bytes.fromhex(proof["leaf_hash"]), 5, 13,
                     [bytes.fromhex(p) for p in proof["proof"]], cp.root)


def test_consistency_proof_between_sizes(tracer: Flask, service: dict) -> None:
    client = tracer.test_client()
    client.post("/api/v1/traces", json=[trace() for _ in range(20)], headers=service)
    body = client.get("/api/v1/consistency?from=7&to=20").get_json()
    verify_consistency(7, 20, [bytes.fromhex(p) for p in body["proof"]],
                       bytes.fromhex(body["root_from"]), bytes.fromhex(body["root_to"]))
    beyond = client.get("/api/v1/consistency?from=7&to=21")
    assert beyond.status_code == 422
    assert beyond.get_json()["error"]["code"] == "tree_size_too_large"
