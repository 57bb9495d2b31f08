"""What a trace is: its actions, its closed schema (no field outside it, so no patient data
can ride along), and its canonical JSON encoding, so a trace hashes the same everywhere."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracer.merkle import leaf_hash

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
_HASH = r"^sha256:[0-9a-f]{64}$"


class Action(StrEnum):
    CREATE_DATASET = "CREATE_DATASET"
    UPDATE_DATASET = "UPDATE_DATASET"
    USE_DATASETS = "USE_DATASETS"
    INGEST_STUDIES = "INGEST_STUDIES"  # studies that entered the repository together
    ACCESS_REQUESTED = "ACCESS_REQUESTED"
    ACCESS_APPROVED = "ACCESS_APPROVED"
    ACCESS_REJECTED = "ACCESS_REJECTED"
    GRANT_ENDED = "GRANT_ENDED"  # a workload's use of its datasets ended
    DESKTOP_STARTED = "DESKTOP_STARTED"
    DESKTOP_STOPPED = "DESKTOP_STOPPED"
    JOB_SUBMITTED = "JOB_SUBMITTED"
    JOB_STARTED = "JOB_STARTED"
    JOB_FINISHED = "JOB_FINISHED"
    JOB_CANCELLED = "JOB_CANCELLED"
    EXPORT_REQUESTED = "EXPORT_REQUESTED"
    EXPORT_REVIEWED = "EXPORT_REVIEWED"  # one reviewer's votes on a request's files
    EXPORT_APPROVED = "EXPORT_APPROVED"
    EXPORT_REJECTED = "EXPORT_REJECTED"
    EXPORT_RELEASED = "EXPORT_RELEASED"
    EXPORT_DOWNLOADED = "EXPORT_DOWNLOADED"
    USER_REVOKED = "USER_REVOKED"
    USER_RESTORED = "USER_RESTORED"


class DatasetUpdate(StrEnum):
    """The kind of change an UPDATE_DATASET trace records."""

    RELEASE = "RELEASE"
    PUBLISH = "PUBLISH"
    INVALIDATE = "INVALIDATE"
    LICENSE_UPDATED = "LICENSE_UPDATED"
    METADATA_UPDATED = "METADATA_UPDATED"
    GRANT_ACCESS = "GRANT_ACCESS"
    REVOKE_ACCESS = "REVOKE_ACCESS"


class DatasetRef(BaseModel):
    """A dataset named by id, with the content hash it had when the trace was written."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=_ID)
    hash: str | None = Field(None, pattern=_HASH)


class Details(BaseModel):
    """The closed set of facts a trace may carry: identifiers, hashes, tools, never data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    update: DatasetUpdate | None = None
    version: str | None = Field(None, max_length=64)
    license: str | None = Field(None, max_length=64, description="SPDX id")
    subject_user: str | None = Field(None, pattern=_ID, description="user granted or revoked")
    project: str | None = Field(None, pattern=_ID)
    workload_id: str | None = Field(None, pattern=_ID)
    purpose: str | None = Field(None, max_length=500)
    reason: str | None = Field(None, max_length=500)
    tool: str | None = Field(None, max_length=128)
    image: str | None = Field(None, max_length=256)
    image_digest: str | None = Field(None, pattern=_HASH)
    flavor: str | None = Field(None, max_length=64)
    command: list[str] | None = Field(None, max_length=256)
    exit_status: int | None = Field(None, ge=-255, le=255)
    output_hash: str | None = Field(None, pattern=_HASH, description="a job's output manifest")
    parent_workload: str | None = Field(None, pattern=_ID, description="desktop a job came from")
    depends_on: list[Annotated[str, Field(pattern=_ID)]] | None = Field(None, max_length=64)
    time_limit_seconds: int | None = Field(None, ge=0, le=10**8)
    gpus: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")]] | None = Field(
        None, max_length=64, description="the devices a job was given")
    file_hashes: list[Annotated[str, Field(pattern=_HASH)]] | None = Field(
        None, max_length=1000, description="the files an export request pinned, by content")
    decision: str | None = Field(None, pattern=r"^[a-z_]{1,32}$",
                                 description="a review's or an export's outcome")
    run_seconds: int | None = Field(None, ge=0, le=10**10)
    cpu_seconds: int | None = Field(None, ge=0, le=10**12)
    memory_peak_bytes: int | None = Field(None, ge=0, le=2**62)
    gpu_seconds: int | None = Field(None, ge=0, le=10**12)
    request_id: str | None = Field(None, pattern=_ID)
    ingest_run: str | None = Field(None, pattern=_ID)
    study_hashes: list[Annotated[str, Field(pattern=_HASH)]] | None = Field(
        None, max_length=1000, description="content hashes of the studies that entered"
    )
    counts: dict[Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")], int] | None = Field(
        None, max_length=32, description="what a run had done when this was traced"
    )


class TraceIn(BaseModel):
    """A trace as a service submits it; the tracer adds the time and the sequence number."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: uuid.UUID | None = Field(None, description="caller's id, makes retries idempotent")
    actor: str = Field(pattern=_ID, description="pseudonymous id of who acted")
    action: Action
    datasets: list[DatasetRef] = Field(default_factory=list, max_length=1000)
    details: Details = Field(default_factory=Details)

    @model_validator(mode="after")
    def _update_needs_kind(self) -> TraceIn:
        if self.action == Action.UPDATE_DATASET and self.details.update is None:
            raise ValueError("UPDATE_DATASET needs details.update")
        if self.action != Action.UPDATE_DATASET and self.details.update is not None:
            raise ValueError("details.update is only for UPDATE_DATASET")
        return self


def canonical_json(value: Any) -> bytes:
    """Canonical encoding (sorted keys, no spaces, UTF-8) of JSON made of str/int/bool/None."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def trace_record(trace: TraceIn, trace_id: uuid.UUID, moment: datetime, seq: int,
                 prev: bytes | None = None) -> dict[str, Any]:
    """The exact record that is hashed into the log (nulls dropped, so it stays small).

    It names its own position: a leaf moved, dropped or swapped no longer matches its place.
    It names the leaf hash of the trace before it (`prev`): a trace edited and re-hashed in
    place breaks the link its successor holds, so verification names that very trace."""
    record: dict[str, Any] = {} if prev is None else {"prev": prev.hex()}
    return record | {
        "seq": seq,
        "id": str(trace_id),
        "time": format_time(moment),
        "actor": trace.actor,
        "action": trace.action.value,
        "datasets": [d.model_dump(exclude_none=True) for d in trace.datasets],
        "details": trace.details.model_dump(mode="json", exclude_none=True),
    }


def trace_leaf(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(canonical bytes, RFC 6962 leaf hash) of a trace record."""
    body = canonical_json(record)
    return body, leaf_hash(body)


def lookup_columns(record: dict[str, Any]) -> dict[str, Any]:
    """What the log's queries filter on, taken from the hashed record itself: the store
    writes exactly this beside the body and verification recomputes it, so an edit to a
    lookup column is caught like an edit to the trace."""
    return {"id": record["id"], "actor": record["actor"], "action": record["action"],
            "update": record["details"].get("update")}


def dataset_links(record: dict[str, Any]) -> list[str]:
    """The datasets a trace names, once each, in order: its rows in the dataset index."""
    return list(dict.fromkeys(d["id"] for d in record["datasets"]))
