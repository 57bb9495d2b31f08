"""When a running desktop must end, decided without I/O: its owner revoked, a dataset it
mounts invalidated or its grant ended, its lifetime reached, or nobody using it. The compute
agent gathers the facts, asks these functions, and acts on the answer.

Stop reasons are stable codes: the API answers them and DESKTOP_STOPPED traces carry them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

# Why a workload stopped (the `stop_reason` the API answers and the trace carries).
STOPPED_BY_OWNER = "stopped_by_owner"
STOPPED_BY_ADMIN = "stopped_by_admin"
STOPPED = "stopped"  # asked to stop without a reason (the agent's own API)
RESTARTED = "restarted"  # its owner asked for a fresh one in its place
IDLE = "idle"
MAX_LIFETIME = "max_lifetime"
OWNER_REVOKED = "owner_revoked"
DATASET_INVALIDATED = "dataset_invalidated"
GRANT_ENDED = "grant_ended"
ENDED = "ended"  # its session ended by itself, cleanly
FAILED = "failed"  # written "failed: <why>"
CANCELLED = "cancelled"  # a job its owner (or an administrator) cancelled
TIME_LIMIT = "time_limit"  # a job stopped at its time limit
OUT_OF_MEMORY = "out_of_memory"  # a job killed for going over its memory limit

# How often the VNC proxy reports an open connection, and how long a report holds: a proxy
# that restarted (or lost its connections) stops reporting, and its viewers count as gone.
ACTIVITY_REPORT_SECONDS = 5.0
VIEWER_LEASE_SECONDS = 3 * ACTIVITY_REPORT_SECONDS


@dataclass(frozen=True)
class Running:
    """An active workload, as far as the stop decision needs it."""

    id: str
    owner: str
    grant_id: str | None
    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenGrant:
    """A grant the dataset service still holds open, with the datasets of it that have been
    invalidated since."""

    id: str
    invalidated: tuple[str, ...] = ()


def must_stop(active: Iterable[Running], revoked_owners: frozenset[str],
              open_grants: Mapping[str, OpenGrant] | None) -> dict[str, str]:
    """The workloads that must stop now, each with its stop reason.

    `open_grants` is every grant the dataset service holds open, read after `active` was
    (a grant is made before its workload is recorded, so a workload read first has its grant
    in the answer unless it ended); None when the dataset service could not be asked, which
    stops nothing on its account."""
    stops: dict[str, str] = {}
    for workload in active:
        if workload.owner in revoked_owners:
            stops[workload.id] = OWNER_REVOKED
        elif open_grants is None or workload.grant_id is None:
            continue
        elif workload.grant_id not in open_grants:
            stops[workload.id] = GRANT_ENDED
        elif open_grants[workload.grant_id].invalidated:
            stops[workload.id] = DATASET_INVALIDATED
    return stops


def first_expiry(started_at: datetime, max_runtime_seconds: float,
                 max_lifetime: timedelta) -> datetime:
    """When a desktop expires unless extended: its flavor's longest run, within the cap."""
    return started_at + min(timedelta(seconds=max_runtime_seconds), max_lifetime)


class ExtendRefused(Exception):
    """An extension that may not be given, with a stable code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def extended(started_at: datetime, expires_at: datetime, step: timedelta,
             max_lifetime: timedelta) -> datetime:
    """The new expiry after one extension: a step later, never past start + the cap; refused
    with `lifetime_limit` once the expiry already is at the cap."""
    cap = started_at + max_lifetime
    if expires_at >= cap:
        raise ExtendRefused("lifetime_limit", "the desktop already runs until its maximum "
                            f"lifetime ({cap.isoformat()}); start a new one to go on")
    return min(expires_at + step, cap)


@dataclass(frozen=True)
class Activity:
    """What the VNC proxy reported of a desktop: when a viewer was last seen connected and
    when input last arrived (None: never)."""

    started_at: datetime
    viewer_seen_at: datetime | None = None
    input_at: datetime | None = None

    def last(self) -> datetime | None:
        """The latest sign of use, or None when nobody ever opened it."""
        seen = [t for t in (self.viewer_seen_at, self.input_at) if t is not None]
        return max(seen) if seen else None

    def viewer_connected(self, now: datetime) -> bool:
        return (self.viewer_seen_at is not None
                and now - self.viewer_seen_at < timedelta(seconds=VIEWER_LEASE_SECONDS))


@dataclass(frozen=True)
class IdleVerdict:
    """Where a desktop stands on idleness: warned since when, culled when, or stop now."""

    warning_at: datetime | None = None
    culls_at: datetime | None = None
    stop: bool = False


def idle_verdict(activity: Activity, warned_at: datetime | None, now: datetime,
                 idle: timedelta, grace: timedelta) -> IdleVerdict:
    """No viewer and no input for `idle` warns; still so `grace` after the warning stops it.
    A viewer connecting again or input clears the warning (the answer has none)."""
    if activity.viewer_connected(now):
        return IdleVerdict()
    quiet_since = activity.last() or activity.started_at
    if now - quiet_since < idle:
        return IdleVerdict()
    warning_at = warned_at if warned_at is not None and warned_at >= quiet_since else now
    culls_at = warning_at + grace
    return IdleVerdict(warning_at, culls_at, stop=now >= culls_at)
