"""The tracer's JSON API: record traces (services only) and read them back."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter

from tracer import policy, store
from tracer.models import TraceDataset, TraceRow
from tracer.schema import Action, DatasetUpdate, TraceIn
from vre.api import PUBLIC, current_principal, endpoint
from vre.errors import Forbidden, NotFound
from vre.web import db_of

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
    seq: int = Field(description="position (leaf index) in the log")
    id: str
    time: str
    actor: str
    action: str
    datasets: list[dict[str, Any]]
    details: dict[str, Any]
    leaf_hash: str

    @classmethod
    def of(cls, stored: store.StoredTrace) -> TraceOut:
        return cls(seq=stored.seq, leaf_hash=stored.leaf_hash.hex(), **stored.record)


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


def public_datasets(session: Any, dataset_ids: list[str]) -> set[str]:
    """Datasets whose publication is itself in the log: their history is public."""
    if not dataset_ids:
        return set()
    published = sa.select(TraceDataset.dataset_id).join(
        TraceRow, TraceRow.seq == TraceDataset.seq).where(
        TraceDataset.dataset_id.in_(dataset_ids),
        TraceRow.action == Action.UPDATE_DATASET.value,
        TraceRow.update == DatasetUpdate.PUBLISH.value)
    return set(session.scalars(published))


@bp.post("/traces")
@endpoint("Record one trace or a batch", body=TraceBatch, response=TraceOut, status=201,
          roles=["service"], tags=["traces"])
def record(body: TraceBatch) -> Any:
    batch = body.root if isinstance(body.root, list) else [body.root]
    if not batch:
        return TraceList(traces=[])
    if len(batch) > MAX_BATCH:
        raise Forbidden(f"at most {MAX_BATCH} traces per request", code="batch_too_large")
    with db_of().session() as session:
        stored = store.append(session, batch)
    # The commit above is the durability point: only now is the trace acknowledged.
    if isinstance(body.root, list):
        return TraceList(traces=[TraceOut.of(s) for s in stored])
    return TraceOut.of(stored[0])


@bp.get("/traces")
@endpoint("List traces by dataset, actor, action and time", query=TraceFilter,
          response=TraceList, roles=PUBLIC, tags=["traces"])
def list_traces(query: TraceFilter) -> TraceList:
    principal = current_principal(required=False)
    with db_of().session() as session:
        if not policy.may_read_all(principal):
            if query.dataset is not None:
                public = query.dataset in public_datasets(session, [query.dataset])
                if not policy.may_read_dataset_history(principal, public):
                    raise Forbidden("this dataset's history is not public",
                                    code="history_not_public", field="dataset")
            elif principal is not None and query.actor in (None, principal.subject):
                query = query.model_copy(update={"actor": principal.subject})
            else:
                raise Forbidden("filter by a public dataset, or by your own actor id")
        found = store.query(session, store.TraceQuery(
            dataset=query.dataset, actor=query.actor, action=query.action, since=query.since,
            until=query.until, after_seq=query.after, limit=query.limit))
    next_after = found[-1].seq if len(found) == query.limit else None
    return TraceList(traces=[TraceOut.of(s) for s in found], next_after=next_after)


@bp.get("/traces/<trace_id>")
@endpoint("One trace with its leaf index", response=TraceOut, roles=PUBLIC, tags=["traces"])
def get_trace(trace_id: str) -> TraceOut:
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
        public = bool(public_datasets(session, ids))
    if not policy.may_read_trace(principal, stored.record["actor"], public):
        # Same answer as a missing trace: do not reveal that it exists.
        raise NotFound(f"no trace with id {trace_id!r}", field="trace_id")
    return TraceOut.of(stored)
