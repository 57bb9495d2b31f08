"""Pieces the ledger integration tests share: the tracer served over real HTTP, an anchoring
worker driven one step at a time, an auditor's verification, and an insider's edits made
straight in the tracer's database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
import sqlalchemy as sa
from eth_account import Account
from web3 import Web3

from launcher.local import service_env
from tracer.anchoring import Anchorer, AnchorPolicy, StepResult
from tracer.chain_jsonrpc import JsonRpcChainClient, load_artifact
from tracer.checkpoints import CheckpointSigner
from tracer.cli import run_verify
from tracer.client import TracerClient
from tracer.devnode import ANVIL_CHAIN_ID, ANVIL_DEV_ADDRESS, ANVIL_DEV_PRIVATE_KEY
from tracer.merkle import leaf_hash
from tracer.models import (
    AnchorRow,
    CheckpointRow,
    LogHead,
    PublishedDataset,
    TraceDataset,
    TraceRow,
)
from tracer.schema import canonical_json
from tracer.verify import VerifyReport
from vre.config import Config
from vre.db import Database
from vre.service_auth import StaticToken
from vre.services import service

HASH = "sha256:" + "ab" * 32
#: Checkpoint (and so anchor) as soon as one trace waits; never on a timer, so a test decides.
EVERY_STEP = AnchorPolicy(interval_seconds=3600, batch_traces=1)
# Creation code of a contract whose runtime code returns 42 (runtime: 602a60005260206000f3).
OTHER_CONTRACT_INITCODE = "0x69602a60005260206000f3600052600a6016f3"


def trace(n: int, **extra: Any) -> dict[str, Any]:
    """A trace as a service submits it, with its own id so retries are idempotent."""
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()), "actor": f"user-{n}", "action": "USE_DATASETS",
        "datasets": [{"id": f"ds-{n % 3}", "hash": HASH}],
        "details": {"purpose": f"study {n}", "workload_id": f"job-{n}"},
    }
    body.update(extra)
    return body


def web3(chain_url: str) -> Web3:
    return Web3(Web3.HTTPProvider(chain_url), middleware=[])


def deploy_raw(chain_url: str, private_key: str, initcode: str) -> str:
    """Deploy arbitrary creation code (free gas, legacy tx); returns the contract address."""
    w3 = web3(chain_url)
    account = Account.from_key(private_key)
    tx = {
        "data": initcode, "value": 0, "gasPrice": 0, "gas": 200_000, "chainId": ANVIL_CHAIN_ID,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
    }
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
    assert receipt["status"] == 1
    return receipt["contractAddress"]


@dataclass(frozen=True)
class ChainState:
    """What would change if anything were sent or deployed from the tracer's account."""

    block: int
    nonce: int
    code: bytes | None

    @classmethod
    def read(cls, chain_url: str, address: str | None = None) -> ChainState:
        w3 = web3(chain_url)
        code = bytes(w3.eth.get_code(Web3.to_checksum_address(address))) if address else None
        return cls(w3.eth.block_number, w3.eth.get_transaction_count(ANVIL_DEV_ADDRESS), code)


def tracer_database(config: Config) -> Database:
    """The tracer's tables on their own engine, as the anchoring worker (or an insider) has."""
    svc = service("tracer")
    return Database.for_service(config, svc.name, svc.migrations)


@dataclass
class Ledger:
    """A tracer reachable over HTTP, its database, and a fresh anchor contract on a chain."""

    config: Config
    db: Database
    tracer_url: str
    chain_url: str
    contract: str
    service_token: str
    auditor_token: str
    anchorer: Anchorer | None = None
    posted: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, config: Config, tracer_url: str, chain_url: str, service_token: str,
             auditor_token: str, db: Database) -> Ledger:
        contract = JsonRpcChainClient(chain_url, ANVIL_DEV_PRIVATE_KEY).deploy()
        return cls(config, db, tracer_url, chain_url, contract, service_token, auditor_token)

    # -- the tracer's callers -----------------------------------------------------------------

    def append(self, count: int) -> list[dict[str, Any]]:
        """POST one batch of `count` traces as a service; each must be acknowledged (201)."""
        batch = [trace(len(self.posted) + i) for i in range(count)]
        response = requests.post(f"{self.tracer_url}/api/v1/traces", json=batch, timeout=30,
                                 headers={"Authorization": f"Bearer {self.service_token}"})
        assert response.status_code == 201, response.text
        stored = response.json()["traces"]
        assert [t["id"] for t in stored] == [t["id"] for t in batch]
        self.posted.extend(stored)
        return stored

    def auditor(self) -> TracerClient:
        return TracerClient(self.tracer_url, StaticToken(self.auditor_token))

    def chain(self, private_key: str = ANVIL_DEV_PRIVATE_KEY) -> JsonRpcChainClient:
        return JsonRpcChainClient(self.chain_url, private_key, self.contract)

    def reader(self) -> JsonRpcChainClient:
        """A chain client of nobody in particular: reading needs no account of ours."""
        return self.chain(Account.create().key.hex())

    def verify(self) -> VerifyReport:
        """What `vre-trace verify` does: the whole log over HTTP against chain and checkpoints."""
        return run_verify(self.auditor(), self.reader())

    # -- the anchoring worker -------------------------------------------------------------------

    def new_anchorer(self, policy: AnchorPolicy = EVERY_STEP, *, db: Database | None = None,
                     contract: str | None = None, chain_url: str | None = None) -> Anchorer:
        """An anchoring worker as `vre-trace worker` builds it (the tracer's key and account)."""
        contract = contract or self.contract
        chain = JsonRpcChainClient(chain_url or self.chain_url, ANVIL_DEV_PRIVATE_KEY, contract)
        return Anchorer(db or self.db, chain, contract,
                        CheckpointSigner.from_file(self.config.tracer_key_path),
                        self.config.ledger_origin, policy)

    def step(self) -> StepResult:
        if self.anchorer is None:
            self.anchorer = self.new_anchorer()
        return self.anchorer.step()

    def append_and_anchor(self, *batches: int) -> list[int]:
        """One batch then one anchoring step per size given; returns the anchored sizes."""
        sizes = []
        for count in batches:
            self.append(count)
            result = self.step()
            assert not result.chain_down
            assert result.anchored == result.checkpointed == len(self.posted), result
            sizes.append(len(self.posted))
        return sizes

    # -- what the database holds ----------------------------------------------------------------

    def stored(self) -> list[tuple[int, str, bytes, bytes]]:
        return stored_rows(self.db)

    def log_head(self) -> int:
        return log_head(self.db)


def stored_rows(db: Database) -> list[tuple[int, str, bytes, bytes]]:
    """(seq, id, body, leaf_hash) of every stored trace, in seq order."""
    with db.session() as session:
        rows = session.execute(sa.select(
            TraceRow.seq, TraceRow.id, TraceRow.body, TraceRow.leaf_hash)
            .order_by(TraceRow.seq)).all()
    return [(seq, tid, bytes(body), bytes(leaf)) for seq, tid, body, leaf in rows]


def log_head(db: Database) -> int:
    """The size the log claims (the row that hands out sequence numbers)."""
    with db.session() as session:
        return session.scalar(sa.select(LogHead.size).where(LogHead.id == 1)) or 0


# -- an insider with write access to the tracer's database ------------------------------------

def _body(session: Any, seq: int) -> dict[str, Any]:
    return json.loads(session.scalar(sa.select(TraceRow.body).where(TraceRow.seq == seq)))


def edit_actor(db: Database, seq: int, actor: str, *, recompute_leaf: bool = False) -> None:
    """Rewrite who acted in one stored trace; a stronger insider also fixes its leaf hash."""
    with db.session() as session:
        record = _body(session, seq)
        assert record["seq"] == seq and record["actor"] != actor
        record["actor"] = actor
        body = canonical_json(record)
        values: dict[str, Any] = {"body": body, "actor": actor}
        if recompute_leaf:
            values["leaf_hash"] = leaf_hash(body)
        session.execute(sa.update(TraceRow).where(TraceRow.seq == seq).values(**values))


def delete_trace(db: Database, seq: int) -> None:
    with db.session() as session:
        session.execute(sa.delete(TraceDataset).where(TraceDataset.seq == seq))
        assert session.execute(sa.delete(TraceRow).where(TraceRow.seq == seq)).rowcount == 1


def swap_traces(db: Database, i: int, j: int) -> None:
    """Exchange the stored bodies and leaf hashes of two positions."""
    with db.session() as session:
        rows = {seq: (bytes(body), bytes(leaf)) for seq, body, leaf in session.execute(
            sa.select(TraceRow.seq, TraceRow.body, TraceRow.leaf_hash)
            .where(TraceRow.seq.in_([i, j])))}
        for here, there in ((i, j), (j, i)):
            body, leaf = rows[there]
            session.execute(sa.update(TraceRow).where(TraceRow.seq == here)
                            .values(body=body, leaf_hash=leaf))


def truncate(db: Database, keep: int, *, cover_tracks: bool = True) -> None:
    """Drop every trace from `keep` on and lower the log's size; also drop the checkpoint and
    anchor rows that would betray it, so only what lives outside the database can tell."""
    with db.session() as session:
        session.execute(sa.delete(TraceDataset).where(TraceDataset.seq >= keep))
        session.execute(sa.delete(TraceRow).where(TraceRow.seq >= keep))
        session.execute(sa.update(LogHead).where(LogHead.id == 1).values(size=keep))
        if cover_tracks:
            session.execute(sa.delete(CheckpointRow).where(CheckpointRow.tree_size > keep))
            session.execute(sa.delete(AnchorRow).where(AnchorRow.tree_size > keep))


# -- the chain's view ---------------------------------------------------------------------------

def next_leaf_index(chain_url: str, contract: str) -> int:
    w3 = web3(chain_url)
    anchor = w3.eth.contract(address=Web3.to_checksum_address(contract),
                             abi=load_artifact()["abi"])
    return anchor.functions.nextLeafIndex().call()


def leaf_events(chain_url: str, contract: str) -> list[tuple[int, bytes]]:
    """(leaf index, leaf hash) of every LeafAnchored event of the contract, in order."""
    w3 = web3(chain_url)
    topic = Web3.keccak(text="LeafAnchored(uint64,bytes32)")
    logs = w3.eth.get_logs({"address": Web3.to_checksum_address(contract), "fromBlock": 0,
                            "toBlock": "latest", "topics": [topic]})
    return [(int.from_bytes(bytes(log["topics"][1]), "big"), bytes(log["data"]))
            for log in logs]


# -- the tracer as its own process ----------------------------------------------------------------

class TracerProcess:
    """`python -m launcher serve tracer` (Granian) in its own session, so it can be killed whole."""

    def __init__(self, config: Config, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = service_env(config.model_copy(update={"tracer_port": port}), "tracer")
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher", "serve", "tracer"], env=env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.kill()
                raise AssertionError(f"the tracer did not become ready: {output}")
            time.sleep(0.05)

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server and its worker at once: no graceful shutdown, no flush."""
        # The group is the one this process was started in (start_new_session): the server
        # master and its worker, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self._log.close()


def edit_column(db: Database, seq: int, **values: Any) -> None:
    """Rewrite lookup columns of one stored trace and nothing else (the body stays hashed)."""
    with db.session() as session:
        assert session.execute(sa.update(TraceRow).where(TraceRow.seq == seq)
                               .values(**values)).rowcount == 1


def unlink_dataset(db: Database, seq: int) -> None:
    """Drop a trace's rows from the dataset index, hiding it from that dataset's history."""
    with db.session() as session:
        assert session.execute(sa.delete(TraceDataset).where(TraceDataset.seq == seq)).rowcount


def link_dataset(db: Database, seq: int, dataset_id: str) -> None:
    """Add a dataset index row the trace at `seq` (if any) does not name."""
    with db.session() as session:
        session.add(TraceDataset(dataset_id=dataset_id, seq=seq))


def publish_history(db: Database, dataset_id: str, seq: int) -> None:
    """Mark a dataset's history public without any PUBLISH trace behind it."""
    with db.session() as session:
        session.add(PublishedDataset(dataset_id=dataset_id, seq=seq))
