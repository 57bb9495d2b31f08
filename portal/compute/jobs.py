"""A batch job's records as the portal and the compute agent both write them: its traces
(JOB_SUBMITTED, JOB_STARTED, JOB_FINISHED, JOB_CANCELLED) and the one conditional step that
takes a job out of the queue as cancelled, so the agent and a web worker never both do."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.models import JobRecord, Workload
from tracer.client import checked_trace
from vre.db import utcnow
from vre.outbox import Outbox


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def wall_seconds(row: JobRecord) -> float | None:
    """How long the job ran (so far, while it runs); None before it started."""
    if row.started_at is None:
        return None
    end = aware(row.ended_at) if row.ended_at else utcnow()
    return max(0.0, (end - aware(row.started_at)).total_seconds())


def _dataset_refs(row: JobRecord) -> list[dict[str, Any]]:
    return [{"id": m["dataset_id"], "hash": m["content_hash"]}
            for m in row.spec.get("mounts", [])]


def _details(row: JobRecord, **extra: Any) -> dict[str, Any]:
    base = {"workload_id": row.id, "subject_user": row.owner_id, "tool": row.application,
            "image": row.spec.get("image") or None,
            "image_digest": row.spec.get("image_digest") or None,
            "flavor": row.flavor, "parent_workload": row.parent_id}
    return {k: v for k, v in {**base, **extra}.items() if v is not None and v != []}


def submitted_trace(row: JobRecord) -> dict[str, Any]:
    """JOB_SUBMITTED: the datasets with their content hashes, image, flavor, command, time
    limit and the jobs it waits for."""
    return checked_trace({
        "actor": row.owner_id, "action": "JOB_SUBMITTED", "datasets": _dataset_refs(row),
        "details": _details(row, command=list(row.spec.get("command", [])),
                            time_limit_seconds=row.time_limit_seconds,
                            depends_on=list(row.depends_on or []))})


def started_trace(row: Workload) -> dict[str, Any]:
    """JOB_STARTED: the GPUs it was given."""
    return checked_trace({"actor": row.owner_id, "action": "JOB_STARTED",
                          "datasets": _dataset_refs(row),
                          "details": _details(row, gpus=list(row.gpu_ids or []))})


def ended_trace(row: Workload, actor: str) -> dict[str, Any]:
    """JOB_FINISHED (or JOB_CANCELLED when it was cancelled): how it ended, what it used and
    the hash over its output folder's manifest."""
    cancelled = row.state == "cancelled"
    run = wall_seconds(row)
    gpus = len(row.gpu_ids or [])
    return checked_trace({
        "actor": actor, "action": "JOB_CANCELLED" if cancelled else "JOB_FINISHED",
        "datasets": _dataset_refs(row),
        "details": _details(
            row, exit_status=_clamp(row.exit_status), reason=(row.reason or None) and
            row.reason[:500], run_seconds=int(run) if run is not None else None,
            cpu_seconds=int(row.cpu_seconds or 0), memory_peak_bytes=row.memory_peak_bytes,
            gpu_seconds=int((run or 0) * gpus), gpus=list(row.gpu_ids or []),
            output_hash=row.output_hash)})


def _clamp(status: int | None) -> int | None:
    return None if status is None else max(-255, min(255, status))


def cancel_queued(session: Session, job_id: str, reason: str, actor: str,
                  outbox: Outbox | None, code: str = "cancelled") -> bool:
    """Move a job from the queue to cancelled, once: False when it left the queue meanwhile.
    Its JOB_CANCELLED trace goes in the same transaction."""
    now = utcnow()
    done = session.execute(sa.update(Workload).where(
        Workload.id == job_id, Workload.state == "queued").values(
        state="cancelled", reason=code, stop_reason=reason[:500], stopped_by=actor,
        ended_at=now).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        return False
    row = session.get(Workload, job_id)
    session.refresh(row)
    if outbox is not None:
        outbox.record(session, ended_trace(row, actor))
    return True


