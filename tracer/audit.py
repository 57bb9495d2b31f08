"""Full verification straight from the tracer's database and the chain, given the data
directory: for when the platform does not run (or refuses to start because of what it would
verify). It checks what `vre-trace verify` checks over HTTP: the entries and what the log's
queries answer from (the lookup columns, the dataset index, the table of public histories)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tracer import store
from tracer.chain import ChainClient, ChainUnavailable
from tracer.chain_config import chain_client, contract_address
from tracer.checkpoints import Checkpoint, CheckpointSigner, verify_checkpoint
from tracer.models import CheckpointRow, LogHead, TraceDataset
from tracer.verify import ExpectedRoot, IndexedLogVerifier, LogVerifier, VerifyReport
from vre.config import Config, ConfigError
from vre.db import Database
from vre.services import service

PAGE = 20_000
_NODE_START_TIMEOUT = 30.0


def verify_database(config: Config, chain: ChainClient) -> VerifyReport:
    """Verify the log in the configured database against the chain and the signed
    checkpoints; the report names the first sequence number that is not what was hashed."""
    svc = service("tracer")
    db = Database.for_service(config, svc.name, svc.migrations)
    try:
        with db.session() as session:
            expected = [
                ExpectedRoot(a.tree_size, a.root, f"chain anchor #{a.index}")
                for a in chain.anchors()
            ]
            expected += signed_checkpoints(session, config)
            return _verify(session, LogVerifier(expected))
    except SQLAlchemyError as exc:
        raise ConfigError(
            "VRE_DATABASE_URL", f"the tracer's log cannot be read there: {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        db.engine.dispose()


def signed_checkpoints(session: Session, config: Config) -> list[ExpectedRoot]:
    """The roots the tracer signed, each signature checked with the tracer's key."""
    public = CheckpointSigner.from_file(config.tracer_key_path).public
    roots = []
    for row in session.scalars(sa.select(CheckpointRow).order_by(CheckpointRow.tree_size)):
        checkpoint = Checkpoint(
            config.ledger_origin, row.tree_size, bytes(row.root), _utc(row.timestamp)
        )
        verify_checkpoint(checkpoint, bytes(row.signature), public)
        roots.append(ExpectedRoot(row.tree_size, checkpoint.root, "signed checkpoint"))
    return roots


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _verify(session: Session, verifier: LogVerifier) -> VerifyReport:
    log_size = session.scalar(sa.select(LogHead.size).where(LogHead.id == 1)) or 0
    checker = IndexedLogVerifier(verifier)
    start = 0
    while True:
        page = store.indexed_entries(session, start, PAGE)
        for entry in page:
            if not checker.feed(entry):
                return verifier.finish(log_size)
        if len(page) < PAGE:
            break
        start = page[-1].seq + 1
    stray = session.scalar(sa.select(sa.func.min(TraceDataset.seq)).where(
        TraceDataset.seq >= checker.end))
    return checker.finish(log_size, stray, store.published_positions(session))


@contextlib.contextmanager
def chain_for(
    config: Config, address: str | None = None, *, as_tracer: bool = False
) -> Iterator[ChainClient]:
    """A reader of the chain the data directory anchors on. With the local development node
    down (the platform is not running), a private node is started for the duration from a copy
    of its saved state; the copy is read, the saved chain is never touched."""
    address = address or contract_address(config)
    if address is None:
        raise ConfigError(
            "VRE_CHAIN_CONTRACT",
            f"no anchor contract is recorded in {config.home} (nor configured)",
        )
    chain = chain_client(config, address, writer=as_tracer)
    if config.chain_url is not None or chain.is_available():
        yield chain
        return
    state = config.home / "chain" / "anvil-state.json"
    if not state.is_file():
        raise ChainUnavailable(
            f"the local chain node is not running and {state} holds no saved chain to read"
        )
    from tracer.devnode import private_node_argv

    with tempfile.TemporaryDirectory(prefix="vre-verify-") as folder:
        private = Path(folder)  # mkdtemp makes it 0700
        shutil.copyfile(state, private / "state.json")
        socket_path = private / "node.ipc"
        with subprocess.Popen(
            private_node_argv(socket_path, private / "state.json"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as node:
            try:
                reader = chain_client(config, address, writer=as_tracer, endpoint=str(socket_path))
                deadline = time.monotonic() + _NODE_START_TIMEOUT
                while not reader.is_available():
                    if node.poll() is not None or time.monotonic() > deadline:
                        raise ChainUnavailable(
                            f"could not start a node from the saved chain in {state}"
                        )
                    time.sleep(0.05)
                yield reader
            finally:
                node.terminate()
                try:
                    node.wait(10)
                except subprocess.TimeoutExpired:
                    node.kill()
