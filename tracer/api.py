"""The tracer's JSON API: record traces (services only) and read them back."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter

from tracer import disclosure, ledger, policy, store
from tracer.checkpoints import key_id, public_key_b64
from tracer.ledger import LogTree, SignedCheckpoint
from tracer.schema import Action, TraceIn
from vre.api import PUBLIC, current_principal, endpoint
from vre.errors import ApiError, Conflict, Forbidden, NotFound, Unprocessable
from vre.web import config_of, db_of

bp = Blueprint("tracer_api", __name__, url_prefix="/api/v1")

MAX_BATCH = 5000


class TraceBatch(RootModel[TraceIn | list[TraceIn]]):
    """One trace, or a list of them appended atomically in order."""

    @classmethod
    def parse_payload(cls, data: Any) -> TraceBatch:
        # Validate against the one shape sent, so errors name the field, not the union arm.
        if isinstance(data, list):
            return cls.model_construct(root=_TRACE_LIST.validate_python(data))
        return cls.model_construct(root=TraceIn.model_validate(data))


_TRACE_LIST = TypeAdapter(list[TraceIn])


class TraceOut(BaseModel):
    prev: str | None = Field(None, description="leaf hash of the trace before it (hex)")
    seq: int = Field(description="position (leaf index) in the log")
    id: str
    time: str
    actor: str
    action: str
    datasets: list[dict[str, Any]]
    details: dict[str, Any]
    leaf_hash: str
    redacted: bool = Field(False, description="a public extract: the actor is a pseudonym, "
                           "datasets that are not public and personal details are left out; "
                           "leaf_hash and the proofs are the whole trace's")

    @classmethod
    def of(cls, stored: store.StoredTrace) -> TraceOut:
        return cls(leaf_hash=stored.leaf_hash.hex(), **stored.record)

    @classmethod
    def public(cls, stored: store.StoredTrace, public: set[str], context: str) -> TraceOut:
        """The trace as a public history shows it (see tracer.disclosure)."""
        key = current_app.extensions["tracer.pseudonym_key"]
        return cls(leaf_hash=stored.leaf_hash.hex(), redacted=True,
                   **disclosure.public_view(stored.record, public, context, key))


class TraceAck(BaseModel):
    """What a batch append answers per trace: where it landed, once durable."""

    seq: int
    id: str
    leaf_hash: str


class TraceAckList(BaseModel):
    traces: list[TraceAck]


class TraceList(BaseModel):
    traces: list[TraceOut]
    next_after: int | None = Field(None, description="pass as ?after= for the next page")


class TraceFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, max_length=128)
    actor: str | None = Field(None, max_length=128)
    action: Action | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: int = Field(-1, ge=-1, description="return traces after this seq")
    limit: int = Field(100, ge=1, le=1000)


@bp.post("/traces")
@endpoint("Record one trace or a batch", body=TraceBatch, response=TraceOut | TraceAckList,
          status=201,
          roles=["service"], tags=["traces"])
def record(body: TraceBatch) -> Any:
    batch = body.root if isinstance(body.root, list) else [body.root]
    if not batch:
        return TraceAckList(traces=[])
    if len(batch) > MAX_BATCH:
        raise ApiError(f"at most {MAX_BATCH} traces per request", code="batch_too_large",
                       status=413)
    with db_of().session() as session:
        stored = store.append(session, batch)
    # The commit above is the durability point: only now is the trace acknowledged.
    if isinstance(body.root, list):
        return TraceAckList(traces=[TraceAck(seq=s.seq, id=s.record["id"],
                                             leaf_hash=s.leaf_hash.hex()) for s in stored])
    return TraceOut.of(stored[0])


@bp.get("/traces")
@endpoint("List traces by dataset, actor, action and time", query=TraceFilter,
          response=TraceList, roles=PUBLIC, tags=["traces"])
def list_traces(query: TraceFilter) -> TraceList:
    principal = current_principal(required=False)
    public_history = False
    with db_of().session() as session:
        if not policy.may_read_all(principal):
            if query.dataset is not None:
                public = query.dataset in store.public_datasets(session, [query.dataset])
                if not policy.may_read_dataset_history(principal, public):
                    raise Forbidden("this dataset's history is not public",
                                    code="history_not_public", field="dataset")
                if query.actor is not None:  # would tell whether that person acted on it
                    raise Forbidden("a public history is not searched by person",
                                    code="actor_filter_not_public", field="actor")
                public_history = True
            elif principal is not None and query.actor in (None, principal.subject):
                query = query.model_copy(update={"actor": principal.subject})
            else:
                raise Forbidden("filter by a public dataset, or by your own actor id")
        found = store.query(session, store.TraceQuery(
            dataset=query.dataset, actor=query.actor, action=query.action, since=query.since,
            until=query.until, after_seq=query.after, limit=query.limit))
        if public_history:
            named = {d["id"] for s in found for d in s.record["datasets"]}
            public_ids = store.public_datasets(session, sorted(named))
    next_after = found[-1].seq if len(found) == query.limit else None
    if public_history:
        assert query.dataset is not None
        traces = [TraceOut.public(s, public_ids, query.dataset) for s in found]
    else:
        traces = [TraceOut.of(s) for s in found]
    return TraceList(traces=traces, next_after=next_after)


def readable_trace(trace_id: str) -> TraceOut:
    """The trace if it exists and the caller may read it; 404 alike otherwise."""
    principal = current_principal(required=False)
    try:
        uuid.UUID(trace_id)
    except ValueError:
        raise NotFound(f"no trace with id {trace_id!r}", field="trace_id") from None
    with db_of().session() as session:
        stored = store.get(session, trace_id)
        if stored is None:
            raise NotFound(f"no trace with id {trace_id!r}", field="trace_id")
        ids = [d["id"] for d in stored.record["datasets"]]
        public = store.public_datasets(session, ids)
    if not policy.may_read_trace(principal, stored.record["actor"], bool(public)):
        # Same answer as a missing trace: do not reveal that it exists.
        raise NotFound(f"no trace with id {trace_id!r}", field="trace_id")
    if policy.sees_whole_trace(principal, stored.record["actor"]):
        return TraceOut.of(stored)
    return TraceOut.public(stored, public, disclosure.history_context(stored.record, public))


@bp.get("/traces/<trace_id>")
@endpoint("One trace with its leaf index", response=TraceOut, roles=PUBLIC, tags=["traces"])
def get_trace(trace_id: str) -> TraceOut:
    return readable_trace(trace_id)


# -- proofs and checkpoints -----------------------------------------------------------------

def _tree() -> LogTree:
    return current_app.extensions["tracer.tree"]


def _origin() -> str:
    return config_of().ledger_origin


class AnchorOut(BaseModel):
    chain_index: int
    tx_hash: str
    block_number: int
    anchored_at: datetime


class CheckpointOut(BaseModel):
    tree_size: int
    root: str = Field(description="hex")
    timestamp: datetime
    note: str = Field(description="the signed text")
    signature: str = Field(description="base64 Ed25519 signature over note")
    key_id: str
    anchor: AnchorOut | None

    @classmethod
    def of(cls, signed: SignedCheckpoint) -> CheckpointOut:
        cp = signed.checkpoint
        anchor = None
        if signed.anchor is not None:
            anchor = AnchorOut.model_validate(signed.anchor, from_attributes=True)
        return cls(tree_size=cp.tree_size, root=cp.root.hex(), timestamp=cp.timestamp,
                   note=cp.note().decode(), signature=base64.b64encode(signed.signature).decode(),
                   key_id=signed.key_id, anchor=anchor)


class CheckpointList(BaseModel):
    origin: str
    public_key: str = Field(description="base64 raw Ed25519 public key of the tracer")
    key_id: str
    chain_contract: str | None
    checkpoints: list[CheckpointOut]


class CheckpointFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: int | None = Field(None, ge=1, description="only checkpoints smaller than this")
    limit: int = Field(20, ge=1, le=1000)


class ProofQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tree_size: int | None = Field(None, ge=1, description="default: the latest checkpoint")


class InclusionProofOut(BaseModel):
    trace_id: str
    leaf_index: int
    tree_size: int
    leaf_hash: str
    root: str
    proof: list[str]
    checkpoint: CheckpointOut | None


class ConsistencyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_: int = Field(alias="from", ge=1)
    to: int = Field(ge=1)


class ConsistencyOut(BaseModel):
    from_size: int
    to_size: int
    root_from: str
    root_to: str
    proof: list[str]


class EntriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = Field(0, ge=0)
    limit: int = Field(10_000, ge=1, le=50_000)
    index: bool = Field(False, description="also each entry's lookup columns and dataset "
                        "links, which the log's queries read: 'seq leaf_hash index body', "
                        "index being base64url JSON {columns, datasets}")


class LogIndexOut(BaseModel):
    """What the log's queries read beyond the entries, for full verification."""

    log_size: int
    published: dict[str, int] = Field(description="the table of public histories: dataset "
                                                  "id to the position of its publication")
    stray_link: int | None = Field(description="the first trace the dataset index lists "
                                               "that the log does not hold")


def _public_key() -> tuple[str, str]:
    public = current_app.extensions["tracer.public_key"]
    return public_key_b64(public), key_id(public)


@bp.get("/checkpoints")
@endpoint("Signed checkpoints, newest first, with their chain anchors", query=CheckpointFilter,
          response=CheckpointList, roles=PUBLIC, tags=["checkpoints"])
def list_checkpoints(query: CheckpointFilter) -> CheckpointList:
    public, kid = _public_key()
    with db_of().session() as session:
        found = ledger.checkpoints(session, _origin(), before=query.before, limit=query.limit)
    return CheckpointList(origin=_origin(), public_key=public, key_id=kid,
                          chain_contract=config_of().chain_contract,
                          checkpoints=[CheckpointOut.of(s) for s in found])


@bp.get("/traces/<trace_id>/proof")
@endpoint("Inclusion proof of a trace against a checkpoint", query=ProofQuery,
          response=InclusionProofOut, roles=PUBLIC, tags=["proofs"])
def trace_proof(trace_id: str, query: ProofQuery) -> InclusionProofOut:
    stored = readable_trace(trace_id)
    with db_of().session() as session:
        size = _tree().sync(session)
        signed = None
        if query.tree_size is None:
            signed = ledger.latest_checkpoint(session, _origin())
            if signed is None:
                raise Conflict("no checkpoint yet; retry in a few seconds",
                               code="no_checkpoint")
            tree_size = signed.checkpoint.tree_size
        else:
            tree_size = query.tree_size
            signed = ledger.checkpoint_at(session, _origin(), tree_size)
    if tree_size > size:
        raise Unprocessable(f"tree_size {tree_size} is beyond the log size {size}",
                            code="tree_size_too_large", field="tree_size")
    if stored.seq >= tree_size:
        raise Conflict(f"trace {trace_id} (leaf {stored.seq}) is not in the tree of size "
                       f"{tree_size} yet", code="not_yet_in_checkpoint", field="tree_size")
    proof = _tree().inclusion_proof(stored.seq, tree_size)
    return InclusionProofOut(
        trace_id=stored.id, leaf_index=stored.seq, tree_size=tree_size,
        leaf_hash=stored.leaf_hash, root=_tree().root(tree_size).hex(),
        proof=[p.hex() for p in proof], checkpoint=CheckpointOut.of(signed) if signed else None)


@bp.get("/consistency")
@endpoint("Consistency proof between two tree sizes", query=ConsistencyQuery,
          response=ConsistencyOut, roles=PUBLIC, tags=["proofs"])
def consistency(query: ConsistencyQuery) -> ConsistencyOut:
    with db_of().session() as session:
        size = _tree().sync(session)
    if query.from_ > query.to:
        raise Unprocessable("'from' must not exceed 'to'", code="bad_range", field="from")
    if query.to > size:
        raise Unprocessable(f"'to' {query.to} is beyond the log size {size}",
                            code="tree_size_too_large", field="to")
    proof = _tree().consistency_proof(query.from_, query.to)
    return ConsistencyOut(from_size=query.from_, to_size=query.to,
                          root_from=_tree().root(query.from_).hex(),
                          root_to=_tree().root(query.to).hex(), proof=[p.hex() for p in proof])


@bp.get("/log/entries")
@endpoint("Raw log entries in order, for full verification: one per line, 'seq leaf_hash "
          "body' (body is the canonical JSON that was hashed); X-Log-Size gives the size",
          query=EntriesQuery, roles=list(policy.READ_ALL_ROLES), tags=["log"])
def log_entries(query: EntriesQuery) -> Response:
    with db_of().session() as session:
        # Size first, then rows below it: a batch committing in between cannot make the
        # page claim more traces than it served.
        size = store.log_size(session)
        limit = min(query.limit, max(0, size - query.start))
        if query.index:
            text = b"".join(b"%d %s %s %s\n" % (
                e.seq, e.leaf_hash.hex().encode(), base64.urlsafe_b64encode(json.dumps(
                    {"columns": e.columns, "datasets": e.datasets}).encode()), e.body)
                for e in store.indexed_entries(session, query.start, limit))
        else:
            rows = store.entries(session, query.start, limit)
            # Plain lines, not JSON objects: verification reads millions and must stay fast.
            text = b"".join(b"%d %s %s\n" % (seq, bytes(leaf).hex().encode(), bytes(body))
                            for seq, leaf, body in rows)
    response = Response(text, mimetype="text/plain")
    response.headers["X-Log-Size"] = str(size)
    return response


@bp.get("/log/index")
@endpoint("What the log's queries read beyond its entries (the table of public histories, "
          "dataset index rows that name no trace), for full verification", response=LogIndexOut,
          roles=list(policy.READ_ALL_ROLES), tags=["log"])
def log_index() -> LogIndexOut:
    with db_of().session() as session:
        return LogIndexOut(log_size=store.log_size(session),
                           published=store.published_positions(session),
                           stray_link=store.stray_link(session))
