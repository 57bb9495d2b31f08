"""The ledger's guarantees end to end, with real parts only: a real anvil node, the tracer
served over real HTTP (in this process, or as its own `vre serve tracer` process), the real
anchoring worker driven one step at a time, and the auditor's `vre-trace verify`.

Tampering is done the way an insider would: straight in the tracer's database, with SQL.
Every test runs on SQLite and on PostgreSQL (the `config` fixture)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask, has_request_context, request
from sqlalchemy import event

from tests.helpers import serving
from tests.ledger_helpers import (
    OTHER_CONTRACT_INITCODE,
    ChainState,
    Ledger,
    TracerProcess,
    delete_trace,
    deploy_raw,
    edit_actor,
    edit_column,
    leaf_events,
    link_dataset,
    log_head,
    next_leaf_index,
    publish_history,
    stored_rows,
    swap_traces,
    trace,
    tracer_database,
    truncate,
    unlink_dataset,
)
from tracer import anchoring, cli, store
from tracer.anchoring import AnchorPolicy, HistoryMismatch
from tracer.chain import ContractMismatch
from tracer.chain_jsonrpc import JsonRpcChainClient
from tracer.devnode import ANVIL_DEV_PRIVATE_KEYS, free_port, running_anvil
from tracer.models import AnchorRow, LeafAnchorRow
from tracer.schema import TraceIn
from tracer.verify import VerifyReport
from vre.config import Config, to_env
from vre.db import Database

pytestmark = pytest.mark.integration

# Four batches, each anchored before the next arrives: anchors (and checkpoints) at 4, 11, 16, 25.
BATCHES = (4, 7, 5, 9)
ANCHORED_SIZES = [4, 11, 16, 25]


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    """One node for the module; every test deploys a fresh contract on it."""
    with running_anvil(free_port()) as url:
        yield url


@pytest.fixture
def tracer_app(make_app: Callable[[str], Flask]) -> Flask:
    return make_app("tracer")  # migrates this test's empty database


@pytest.fixture
def tracer_url(tracer_app: Flask) -> Iterator[str]:
    with serving(tracer_app) as url:
        yield url


@pytest.fixture
def tracer_db(config: Config) -> Iterator[Database]:
    db = tracer_database(config)
    yield db
    db.engine.dispose()


@pytest.fixture
def tokens(token: Callable[..., str]) -> dict[str, str]:
    return {"service_token": token("service:dataset_service", "service"),
            "auditor_token": token("auditor-1", "auditor")}


@pytest.fixture
def ledger(config: Config, tracer_url: str, anvil_url: str, tokens: dict[str, str],
           tracer_db: Database) -> Ledger:
    return Ledger.open(config, tracer_url, anvil_url, db=tracer_db, **tokens)


@pytest.fixture
def anchored(ledger: Ledger) -> Ledger:
    """A log of 25 traces anchored four times, verified clean before the test touches it."""
    assert ledger.append_and_anchor(*BATCHES) == ANCHORED_SIZES
    assert ledger.verify().ok
    return ledger


def stop_after(steps: int) -> Callable[[], bool]:
    """A stop() for Anchorer.run that lets it try a few steps, so a test can never hang."""
    calls = iter(range(steps + 1))
    return lambda: next(calls, steps) >= steps


def caught(ledger: Ledger, seq: int, *words: str) -> VerifyReport:
    report = ledger.verify()
    assert not report.ok, "the tampered log verified"
    assert report.divergence is not None
    assert report.divergence.seq == seq, report.divergence
    for word in words:
        assert word in report.divergence.reason, report.divergence
    return report


def anchorer_refuses(ledger: Ledger, match: str) -> None:
    """A restarted worker does not extend the altered history on the chain."""
    before = ChainState.read(ledger.chain_url, ledger.contract)
    with pytest.raises(HistoryMismatch, match=match):
        ledger.new_anchorer().check_chain()
    assert ChainState.read(ledger.chain_url, ledger.contract) == before


# -- 1. an untouched log -----------------------------------------------------------------------

def test_an_untouched_log_verifies_against_every_anchor_and_checkpoint(ledger: Ledger) -> None:
    assert ledger.append_and_anchor(5, 1, 17, 8) == [5, 6, 23, 31]
    assert [a.tree_size for a in ledger.reader().anchors()] == [5, 6, 23, 31]
    listing = ledger.auditor().checkpoints()
    assert [c["tree_size"] for c in listing["checkpoints"]] == [31, 23, 6, 5]
    assert [c["anchor"]["chain_index"] for c in listing["checkpoints"]] == [3, 2, 1, 0]
    assert [seq for seq, *_ in ledger.stored()] == list(range(31)) and ledger.log_head() == 31

    report = ledger.verify()
    assert report.ok, report.divergence
    assert (report.log_size, report.leaves, report.anchored_size, report.roots_checked) == \
        (31, 31, 31, 4)
    assert report.notes == []

    # Traces not anchored yet verify against the log alone, and the report says so.
    ledger.append(3)
    report = ledger.verify()
    assert report.ok, report.divergence
    assert (report.log_size, report.leaves, report.anchored_size, report.roots_checked) == \
        (34, 34, 31, 4)
    assert report.notes == ["3 newest traces are not anchored yet (they verify against the "
                            "log only)"]


def test_verifying_while_traces_arrive_reports_no_divergence(anchored: Ledger,
                                                             tracer_app: Flask) -> None:
    """An auditor verifies a live log: another service's batch that commits while a page of
    entries is being served must not look like tampering. The interleaving is made exact: the
    batch (a real POST) commits just before the request serving the first page of entries reads
    the log's size."""
    engine = tracer_app.extensions["vre.db"].engine
    fired: list[bool] = []

    def append_meanwhile(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if fired or not statement.lstrip().startswith("SELECT log_head.size"):
            return
        # The verifier fetches pages ahead in parallel: act in the request for page one only.
        if not (has_request_context() and request.path == "/api/v1/log/entries"
                and request.args.get("start") == "0"):
            return
        fired.append(True)
        anchored.append(3)

    event.listen(engine, "before_cursor_execute", append_meanwhile)
    try:
        report = anchored.verify()
    finally:
        event.remove(engine, "before_cursor_execute", append_meanwhile)
    assert fired, "the entries endpoint no longer reads the log size this way: update the hook"
    assert anchored.log_head() == 28
    assert report.ok, report.divergence
    assert report.anchored_size == 25 and report.leaves in (25, 28)
    assert anchored.verify().ok


# -- 2. an insider edits the database ----------------------------------------------------------

def test_editing_a_stored_trace_is_caught_at_its_seq(anchored: Ledger) -> None:
    edit_actor(anchored.db, 13, "someone-else")
    caught(anchored, 13, "edited")


def test_editing_a_trace_and_its_leaf_hash_is_caught_at_its_seq(anchored: Ledger) -> None:
    edit_actor(anchored.db, 13, "someone-else", recompute_leaf=True)
    # Every entry hashes to its stored leaf now, but trace 14 still names the leaf trace 13
    # had: the report names 13 itself, not the start of the anchored range (11).
    caught(anchored, 13, "recomputed")
    anchorer_refuses(anchored, "differs")


def test_editing_the_newest_trace_and_its_leaf_hash_is_caught_by_the_anchored_root(
        anchored: Ledger) -> None:
    # No later trace names the newest one: only the root anchored at 25 can tell, so the
    # report names the first seq after the last root that still verified.
    edit_actor(anchored.db, 24, "someone-else", recompute_leaf=True)
    report = caught(anchored, 16, "root", "tree size 25", "16..24")
    assert report.roots_checked == 3


def test_deleting_a_trace_is_caught_at_its_seq(anchored: Ledger) -> None:
    delete_trace(anchored.db, 13)
    caught(anchored, 13, "missing")
    anchorer_refuses(anchored, "truncated")


def test_swapping_two_traces_is_caught_at_the_first_of_them(anchored: Ledger) -> None:
    swap_traces(anchored.db, 6, 19)
    caught(anchored, 6, "swapped")
    anchorer_refuses(anchored, "differs")


def test_truncating_an_anchored_log_is_caught_at_the_new_size(anchored: Ledger) -> None:
    # The insider also drops the checkpoint and anchor rows past the cut: only the chain knows.
    truncate(anchored.db, 20)
    assert anchored.log_head() == 20
    caught(anchored, 20, "truncated")
    anchorer_refuses(anchored, "truncated")


def test_truncating_traces_covered_by_a_signed_checkpoint_is_caught(anchored: Ledger) -> None:
    # Six more traces are checkpointed (signed by the tracer) while the chain cannot be reached,
    # then three of them are dropped; the tracer still publishes its checkpoint of 31 traces.
    anchored.append(6)
    worker = anchored.new_anchorer(chain_url=f"http://127.0.0.1:{free_port()}")
    result = worker.step()
    assert result.chain_down and result.checkpointed == 31
    truncate(anchored.db, 28, cover_tracks=False)
    sizes = [c["tree_size"] for c in anchored.auditor().checkpoints()["checkpoints"]]
    assert sizes[0] == 31
    # The signed root of 31 traces cannot be recomputed from a log of 28: truncated at 28.
    caught(anchored, 28, "31")


def test_vre_trace_verify_exits_0_then_1_naming_the_first_bad_seq(
        anchored: Ledger, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("VRE_"):
            monkeypatch.delenv(key)  # load_config refuses settings it does not know
    monkeypatch.setenv("VRE_HOME", str(tmp_path / "auditor-home"))
    monkeypatch.setenv("VRE_CHAIN_URL", anchored.chain_url)
    argv = ["verify", "--tracer", anchored.tracer_url, "--contract", anchored.contract,
            "--token", anchored.auditor_token]

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "log size 25, anchored 25, verified 25 leaves and 4 roots" in out
    assert "OK: the log matches every anchored and signed root" in out

    delete_trace(anchored.db, 9)
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED: first bad sequence number 9:" in out


# -- 2b. the same insider, verified with the platform down ----------------------------------------

def verify_offline(ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`vre-trace verify --home`: the database and the chain, and no tracer (its URL leads
    nowhere), as an operator runs it when the platform refuses to start."""
    for key in list(os.environ):
        if key.startswith("VRE_"):
            monkeypatch.delenv(key)
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = to_env(ledger.config.model_copy(update={"chain_url": ledger.chain_url,
                                                  "tracer_url": nowhere}))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = cli.main(["verify", "--home", str(ledger.config.home), "--contract", ledger.contract])
    return code, capsys.readouterr().out


TAMPERING: dict[str, tuple[Callable[[Database], None], int, str]] = {
    "a re-hashed edit": (lambda db: edit_actor(db, 5, "someone-else", recompute_leaf=True), 5,
                         "recomputed"),
    "a deleted row": (lambda db: delete_trace(db, 13), 13, "missing"),
    "a swapped pair": (lambda db: swap_traces(db, 6, 19), 6, "swapped"),
    "an edited actor column": (lambda db: edit_column(db, 9, actor="user-1"), 9,
                               "actor column"),
    "an edited action column": (lambda db: edit_column(db, 10, action="CREATE_DATASET"), 10,
                                "action column"),
    "an edited time column": (
        lambda db: edit_column(db, 12, recorded_at=datetime(2020, 1, 1, tzinfo=UTC)), 12,
        "recorded_at column"),
    "a trace taken out of its dataset's history": (lambda db: unlink_dataset(db, 7), 7,
                                                   "dataset index"),
    "a trace put into another dataset's history": (
        lambda db: link_dataset(db, 8, "ds-private"), 8, "dataset index"),
    "an index row for a trace not in the log": (lambda db: link_dataset(db, 40, "ds-1"), 40,
                                                "does not hold"),
    "a private history made public": (lambda db: publish_history(db, "ds-private", 3), 3,
                                      "published"),
}


def test_an_untouched_log_verifies_with_the_platform_down(
        anchored: Ledger, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify_offline(anchored, monkeypatch, capsys)
    assert code == 0, out
    assert "log size 25, anchored 25, verified 25 leaves and 4 roots" in out


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_tampering_is_named_at_its_seq_with_the_platform_down(
        anchored: Ledger, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tampering: str) -> None:
    tamper, seq, word = TAMPERING[tampering]
    tamper(anchored.db)
    code, out = verify_offline(anchored, monkeypatch, capsys)
    assert code == 1, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and failed[0].startswith(f"FAILED: first bad sequence number {seq}:"), out
    assert word in failed[0], out


# -- 2c. the same insider, verified over HTTP against the running tracer ------------------------

def verify_over_http(ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str], home: Path) -> tuple[int, str]:
    """`vre-trace verify --tracer`: an auditor's machine, the tracer's API and the chain."""
    for key in list(os.environ):
        if key.startswith("VRE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("VRE_HOME", str(home))
    monkeypatch.setenv("VRE_CHAIN_URL", ledger.chain_url)
    code = cli.main(["verify", "--tracer", ledger.tracer_url, "--contract", ledger.contract,
                     "--token", ledger.auditor_token])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_tampering_is_named_at_its_seq_over_http(
        anchored: Ledger, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path, tampering: str) -> None:
    """What `--home` finds in the database, verification over HTTP finds too: the lookup
    columns, the dataset index and the table of public histories come with the entries."""
    code, out = verify_over_http(anchored, monkeypatch, capsys, tmp_path / "auditor-home")
    assert code == 0, out
    tamper, seq, word = TAMPERING[tampering]
    tamper(anchored.db)
    code, out = verify_over_http(anchored, monkeypatch, capsys, tmp_path / "auditor-home")
    assert code == 1, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and failed[0].startswith(f"FAILED: first bad sequence number {seq}:"), out
    assert word in failed[0], out


# -- 3. the chain goes away ----------------------------------------------------------------------

def test_traces_arriving_while_the_chain_is_down_are_kept_and_anchored_in_one_transaction(
        config: Config, tracer_url: str, tracer_db: Database, tokens: dict[str, str],
        tmp_path: Path) -> None:
    state, port = tmp_path / "anvil-state.json", free_port()
    with running_anvil(port, state) as chain_url:
        ledger = Ledger.open(config, tracer_url, chain_url, db=tracer_db, **tokens)
        assert ledger.append_and_anchor(6, 4) == [6, 10]
    assert not ledger.chain().is_available()

    for count in (3, 5, 2):
        ledger.append(count)  # asserts 201: acknowledged while the chain is down
        result = ledger.step()  # raises nothing
        assert result.chain_down and result.anchored is None
        assert result.checkpointed == len(ledger.posted)
    result = ledger.step()
    assert result.chain_down and result.checkpointed is None
    assert [(seq, tid) for seq, tid, *_ in ledger.stored()] == \
        [(t["seq"], t["id"]) for t in ledger.posted] and ledger.log_head() == 20

    with running_anvil(port, state) as again:
        assert again == chain_url
        assert [a.tree_size for a in ledger.reader().anchors()] == [6, 10]
        before = ChainState.read(chain_url)
        result = ledger.step()
        assert not result.chain_down and result.anchored == 20
        after = ChainState.read(chain_url)
        assert after.nonce == before.nonce + 1, "the backlog takes exactly one transaction"
        anchors = ledger.reader().anchors()
        assert [a.tree_size for a in anchors] == [6, 10, 20]
        assert ledger.reader().latest_anchor() == anchors[-1]

        report = ledger.verify()
        assert report.ok, report.divergence
        # Anchors at 6, 10, 20 and checkpoints at 6, 10, 13, 18, 20.
        assert (report.log_size, report.anchored_size, report.roots_checked) == (20, 20, 5)
        assert ledger.step().anchored is None  # nothing left to anchor
        assert ChainState.read(chain_url).nonce == after.nonce


# -- 4. the tracer is killed mid-batch -------------------------------------------------------------

BATCH = 100


def test_a_tracer_killed_mid_stream_loses_no_acknowledged_trace(
        config: Config, make_app: Callable[[str], Flask], tracer_db: Database,
        tokens: dict[str, str], anvil_url: str) -> None:
    make_app("tracer")  # migrate; the tracer itself runs as its own process
    headers = {"Authorization": f"Bearer {tokens['service_token']}"}
    sent: list[list[dict[str, Any]]] = []  # every batch sent, acknowledged or not
    acked: dict[str, int] = {}  # id -> seq of every trace acknowledged with 201
    unexpected: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(url: str, worker: int) -> None:
        http, n = requests.Session(), 0
        while True:
            batch = [trace(worker * 1_000_000 + n + i) for i in range(BATCH)]
            n += BATCH
            with lock:
                sent.append(batch)
            try:
                response = http.post(f"{url}/api/v1/traces", json=batch, headers=headers,
                                     timeout=30)
            except requests.RequestException:
                return  # the tracer is gone: this batch was never acknowledged
            if response.status_code != 201:
                unexpected.append(f"{response.status_code} {response.text[:200]}")
                return
            with lock:
                acked.update((t["id"], t["seq"]) for t in response.json()["traces"])
                if len(acked) >= 12 * BATCH:
                    enough.set()

    tracer = TracerProcess(config, free_port())
    try:
        clients = [threading.Thread(target=client, args=(tracer.url, w)) for w in range(3)]
        for thread in clients:
            thread.start()
        assert enough.wait(60), f"too few batches acknowledged: {tracer.output()[-2000:]}"
        tracer.kill()  # SIGKILL to the server and its worker while batches are in flight
        for thread in clients:
            thread.join(30)
            assert not thread.is_alive()
    finally:
        tracer.close()
    assert not unexpected, unexpected
    unacknowledged = [batch for batch in sent if batch[0]["id"] not in acked]
    assert unacknowledged, "the kill should have caught at least one batch in flight"

    def check_log() -> dict[str, int]:
        stored = {tid: seq for seq, tid, *_ in stored_rows(tracer_db)}
        assert sorted(stored.values()) == list(range(len(stored))), "seqs are 0..n-1"
        assert log_head(tracer_db) == len(stored)
        lost = {tid: seq for tid, seq in acked.items() if stored.get(tid) != seq}
        assert not lost, f"acknowledged traces lost or moved: {lost}"
        assert set(stored) <= {t["id"] for batch in sent for t in batch}
        for batch in sent:
            seqs = [stored[t["id"]] for t in batch if t["id"] in stored]
            if seqs:  # a batch is stored whole, in order, or not at all
                assert seqs == list(range(seqs[0], seqs[0] + len(batch))), seqs
        return stored

    before = check_log()

    # Restarted, the tracer takes the unacknowledged batches again: retries are idempotent, so
    # a batch that did commit before the kill keeps its seqs and is not stored twice.
    tracer = TracerProcess(config, free_port())
    try:
        for batch in unacknowledged:
            response = requests.post(f"{tracer.url}/api/v1/traces", json=batch,
                                     headers=headers, timeout=30)
            assert response.status_code == 201, response.text
            seqs = [t["seq"] for t in response.json()["traces"]]
            if batch[0]["id"] in before:
                assert seqs == [before[t["id"]] for t in batch]
            acked.update((t["id"], t["seq"]) for t in response.json()["traces"])
        stored = check_log()
        assert set(stored) == {t["id"] for batch in sent for t in batch}

        # And the whole log verifies against a fresh anchor of it.
        ledger = Ledger.open(config, tracer.url, anvil_url, db=tracer_db, **tokens)
        assert ledger.step().anchored == len(stored)
        report = ledger.verify()
        assert report.ok, report.divergence
        assert (report.log_size, report.anchored_size) == (len(stored), len(stored))
    finally:
        tracer.close()


# -- 5. the worker refuses a chain that is not its own -------------------------------------------

@pytest.mark.parametrize("holder", ["other code", "no code", "another owner's TraceAnchor"])
def test_the_anchorer_refuses_an_address_that_does_not_hold_our_contract(
        ledger: Ledger, holder: str) -> None:
    stranger = ANVIL_DEV_PRIVATE_KEYS[1]
    if holder == "other code":
        address = deploy_raw(ledger.chain_url, stranger, OTHER_CONTRACT_INITCODE)
    elif holder == "no code":
        address = JsonRpcChainClient(ledger.chain_url, stranger).account
    else:
        address = JsonRpcChainClient(ledger.chain_url, stranger).deploy()
    ledger.append(3)
    before = ChainState.read(ledger.chain_url, address)

    worker = ledger.new_anchorer(contract=address)
    with pytest.raises(ContractMismatch):
        worker.check_chain()
    with pytest.raises(ContractMismatch):
        worker.step()
    with pytest.raises(ContractMismatch):
        ledger.new_anchorer(contract=address).run(stop_after(3))

    # Nothing was sent or deployed: same block, same nonce, same code at the address.
    assert ChainState.read(ledger.chain_url, address) == before
    with ledger.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AnchorRow)) == 0


@pytest.mark.parametrize("other_log", ["empty", "other traces"])
def test_the_anchorer_refuses_a_chain_whose_history_is_not_this_log(
        ledger: Ledger, config: Config, tmp_path: Path, other_log: str) -> None:
    assert ledger.append_and_anchor(6) == [6]
    # A fresh database pointed at the same contract (restored from elsewhere, or mixed up).
    other_config = config.model_copy(update={
        "home": tmp_path / "other-home",
        "database_schema_prefix": config.database_schema_prefix + "other_"})
    other = tracer_database(other_config)
    try:
        other.migrate(other_config, "tracer")
        if other_log == "other traces":
            with other.session() as session:
                store.append(session, [TraceIn.model_validate(trace(100 + i))
                                       for i in range(6)])
        before = ChainState.read(ledger.chain_url, ledger.contract)
        anchors = ledger.reader().anchors()
        match = "holds only 0" if other_log == "empty" else "root at tree size 6 differs"

        with pytest.raises(HistoryMismatch, match=match):
            ledger.new_anchorer(db=other).step()
        with pytest.raises(HistoryMismatch, match=match):
            ledger.new_anchorer(db=other).run(stop_after(3))

        assert ChainState.read(ledger.chain_url, ledger.contract) == before
        assert ledger.reader().anchors() == anchors
        with other.session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(AnchorRow)) == 0
    finally:
        other.engine.dispose()


# -- 6. per-trace mode --------------------------------------------------------------------------

def test_per_trace_mode_anchors_every_leaf_in_its_own_transaction(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anchoring, "LEAVES_PER_STEP", 5)  # so a backlog spans several steps
    ledger.anchorer = ledger.new_anchorer(AnchorPolicy(interval_seconds=3600, batch_traces=1,
                                                       per_trace=True))
    ledger.append(7)
    first, second = ledger.step(), ledger.step()
    assert (first.anchored, first.leaves_anchored) == (7, 5)
    assert (second.anchored, second.leaves_anchored) == (None, 2)
    ledger.append(4)
    third = ledger.step()
    assert (third.anchored, third.leaves_anchored) == (11, 4)
    assert ledger.step().leaves_anchored == 0

    assert next_leaf_index(ledger.chain_url, ledger.contract) == 11 == ledger.log_head()
    with ledger.db.session() as session:
        assert list(session.scalars(sa.select(LeafAnchorRow.seq).order_by(
            LeafAnchorRow.seq))) == list(range(11))
    assert leaf_events(ledger.chain_url, ledger.contract) == \
        [(seq, leaf) for seq, _, _, leaf in ledger.stored()]
    report = ledger.verify()
    assert report.ok, report.divergence
    assert (report.log_size, report.anchored_size) == (11, 11)
