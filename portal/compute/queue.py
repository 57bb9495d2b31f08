"""Which waiting batch jobs start now on one machine, decided from data alone (after Slurm's
fair share and Kueue's admission fair sharing). No database, no I/O and no clock: the agent
gathers the facts, passes `now`, and acts on the plan.

Between users, the next job comes from the user with the least recent usage, decayed with a
half-life; within one user, jobs go in submission order. Each job placed in the order charges
its owner its expected cost, so two users with equal usage take turns. A job that does not
fit blocks those behind it, except that a later job that fits now and ends before the blocked
job's estimated start may run (conservative backfill: it delays nobody's estimate). A job
waits for the jobs it comes `after` to succeed and is cancelled if any ended otherwise.

Estimated starts assume every running job runs to its time limit, so they are upper bounds
for the jobs already in line; jobs submitted later with less usage can still go ahead.

A GPU goes to one job, unless the job's flavor shares: then up to `gpu_share` jobs run on
it at once, each holding that share of it. Sharing jobs are packed onto the GPUs already
shared, so whole GPUs stay free for the jobs that need one to themselves."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from functools import cached_property

# Why a waiting job was cancelled (stable codes). EXCEEDS_HOST is the code portal.quotas
# refuses such a job with at submission; here it catches a pool that shrank since.
DEPENDENCY_FAILED = "dependency_failed"
EXCEEDS_HOST = "exceeds_host"

# Why a job still waits (Slurm's reason names, which people already know).
DEPENDENCY = "Dependency"
RESOURCES = "Resources"
PRIORITY = "Priority"

SUCCEEDED = "succeeded"

# How much one GPU second costs against fair share, in CPU seconds.
GPU_WEIGHT = 8.0
HALF_LIFE = timedelta(days=7)

# CPUs are fractional; sums of fractions must not refuse a job that exactly fits.
_EPS = 1e-9


@dataclass(frozen=True)
class Ask:
    """What a job needs for all of its run; `gpu_share` jobs may run on each of its GPUs at
    once (1: the GPUs are its own)."""

    cpus: float
    memory_mib: int
    gpus: int = 0
    gpu_share: int = 1

    @cached_property  # asked for each job in each round of a queue of thousands
    def gpu_amount(self) -> Fraction:
        """The GPUs it holds: a share of one, for a job whose flavor shares."""
        return Fraction(self.gpus, max(self.gpu_share, 1))


@dataclass(frozen=True)
class Waiting:
    """A job in the queue; `after` lists the jobs that must succeed before it may start."""

    job_id: str
    owner: str
    submitted_at: datetime
    ask: Ask
    time_limit_seconds: int
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Running:
    """A job running now; it holds its ask's CPUs and memory and exactly the GPUs `gpu_ids`."""

    job_id: str
    owner: str
    started_at: datetime
    ask: Ask
    time_limit_seconds: int
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pool:
    """All the machine has for batch jobs; GPUs by device id."""

    cpus: float
    memory_mib: int
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spent:
    """What a finished job cost its owner, and when it ended (for decayed usage)."""

    owner: str
    ended_at: datetime
    cost: float


@dataclass(frozen=True)
class Start:
    """Start this job now on these GPU devices."""

    job_id: str
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cancel:
    """Cancel this waiting job: it can never start."""

    job_id: str
    code: str
    reason: str


@dataclass(frozen=True)
class Place:
    """Where a job that still waits stands: its 1-based position, why it waits, and when it
    should start (None while that depends on other jobs ending)."""

    job_id: str
    position: int
    reason: str
    detail: str
    estimated_start: datetime | None


@dataclass(frozen=True)
class Plan:
    """One planning round: jobs to start, jobs to cancel, and the rest in line by position."""

    starts: tuple[Start, ...]
    cancels: tuple[Cancel, ...]
    places: tuple[Place, ...]


def cost(ask: Ask, seconds: float, gpu_weight: float = GPU_WEIGHT) -> float:
    """What running `ask` for `seconds` charges against fair share, in CPU seconds."""
    return (ask.cpus + float(ask.gpu_amount) * gpu_weight) * max(seconds, 0.0)


def decayed_usage(spent: Iterable[Spent], running: Iterable[Running], now: datetime,
                  half_life: timedelta = HALF_LIFE,
                  gpu_weight: float = GPU_WEIGHT) -> dict[str, float]:
    """Each owner's recent usage: finished jobs' costs halved for every half-life since they
    ended, plus running jobs' cost so far (as if they ended now, so usage does not jump when
    they do)."""
    usage: dict[str, float] = {}
    scale = half_life.total_seconds()
    for item in spent:
        age = max((now - item.ended_at).total_seconds(), 0.0)
        usage[item.owner] = usage.get(item.owner, 0.0) + item.cost * 0.5 ** (age / scale)
    for job in running:
        held = Ask(job.ask.cpus, job.ask.memory_mib, len(job.gpu_ids), job.ask.gpu_share)
        so_far = cost(held, (now - job.started_at).total_seconds(), gpu_weight)
        usage[job.owner] = usage.get(job.owner, 0.0) + so_far
    return usage


def fair_order(jobs: Iterable[Waiting], usage: Mapping[str, float],
               gpu_weight: float = GPU_WEIGHT) -> list[Waiting]:
    """The jobs in fair-share order: repeatedly the oldest job of the owner with least usage,
    charging that owner the job's cost over its time limit. Equal usage goes first to the
    owner charged earliest in this order (older usage has decayed more), then to the older
    job. Per-owner queues and a heap of owners keep this O(n log owners)."""
    queues: dict[str, deque[Waiting]] = {}
    for job in sorted(jobs, key=lambda j: (j.submitted_at, j.job_id)):
        queues.setdefault(job.owner, deque()).append(job)
    heap = [(usage.get(owner, 0.0), -1, q[0].submitted_at, q[0].job_id, owner)
            for owner, q in queues.items()]
    heapq.heapify(heap)
    order: list[Waiting] = []
    while heap:
        used, _, _, _, owner = heapq.heappop(heap)
        queue = queues[owner]
        job = queue.popleft()
        order.append(job)
        if queue:
            charged = used + cost(job.ask, job.time_limit_seconds, gpu_weight)
            heapq.heappush(heap, (charged, len(order), queue[0].submitted_at,
                                  queue[0].job_id, owner))
    return order


class _Timeline:
    """Free resources from `now` on, as jobs end at their time limits: reserves jobs one after
    another, each no earlier than the one before (so estimates follow positions)."""

    def __init__(self, pool: Pool, holding: Iterable[tuple[datetime, Ask]], now: datetime):
        self.at = now
        self.cpus = pool.cpus
        self.memory = pool.memory_mib
        # GPUs summed, shares included: for estimates, not for which GPU a job gets
        self.gpus = Fraction(len(pool.gpu_ids))
        self.ends: list[tuple[datetime, int, float, int, Fraction]] = []
        for end, ask in holding:
            self._take(ask)
            self.ends.append((max(end, now), len(self.ends), ask.cpus, ask.memory_mib,
                              ask.gpu_amount))
        heapq.heapify(self.ends)
        self.count = len(self.ends)

    def _take(self, ask: Ask) -> None:
        self.cpus -= ask.cpus
        self.memory -= ask.memory_mib
        self.gpus -= ask.gpu_amount

    def reserve(self, ask: Ask, seconds: int) -> datetime:
        """The earliest time, not before the last reservation, at which `ask` fits; held
        from then for `seconds`. The ask must fit in the pool."""
        while not _fits(ask, self.cpus, self.memory, self.gpus):
            end, _, cpus, memory, gpus = heapq.heappop(self.ends)
            self.at = max(self.at, end)
            self.cpus += cpus
            self.memory += memory
            self.gpus += gpus
        self._take(ask)
        self.count += 1
        heapq.heappush(self.ends, (self.at + timedelta(seconds=seconds), self.count,
                                   ask.cpus, ask.memory_mib, ask.gpu_amount))
        return self.at


def _gpu_key(device: str) -> tuple[int, int, str]:
    return (0, int(device), "") if device.isdigit() else (1, 0, device)


def _fits(ask: Ask, cpus: float, memory_mib: int, gpus: Fraction | int) -> bool:
    return (ask.cpus <= cpus + _EPS and ask.memory_mib <= memory_mib
            and (not ask.gpus or ask.gpu_amount <= gpus))


def _gpus_for(ask: Ask, load: Mapping[str, Fraction]) -> tuple[str, ...] | None:
    """The GPUs a job would get now, given how much of each device is held (`load`, 0 to 1);
    None when too few have room. A sharing job goes to the fullest GPU it still fits on."""
    if not ask.gpus:
        return ()
    part = Fraction(1, max(ask.gpu_share, 1))
    room = [d for d, held in load.items() if held + part <= 1]
    if len(room) < ask.gpus:
        return None
    room.sort(key=lambda d: (-load[d], _gpu_key(d)) if part < 1 else _gpu_key(d))
    return tuple(room[:ask.gpus])


def _room(ask: Ask, cpus: float, memory_mib: int,
          load: Mapping[str, Fraction]) -> tuple[str, ...] | None:
    """The GPUs a job would get if it started now; None when it does not fit (CPUs, memory
    or GPUs)."""
    if ask.cpus > cpus + _EPS or ask.memory_mib > memory_mib:
        return None
    return _gpus_for(ask, load)


def _whole(load: Mapping[str, Fraction]) -> int:
    """How many GPUs are free to the last share."""
    return sum(1 for held in load.values() if held == 0)


def _amount(value: float, unit: str) -> str:
    return f"{value:g} {unit}"


def _dependencies(waiting: Sequence[Waiting], running_ids: set[str],
                  finished: Mapping[str, str],
                  doomed: dict[str, Cancel]) -> dict[str, tuple[str, ...]]:
    """Cancel (into `doomed`) the jobs whose dependencies can no longer all succeed, and answer
    the still-unfinished dependencies of each job that must wait for them."""
    by_id = {job.job_id: job for job in waiting}
    dependents: dict[str, list[str]] = {}
    pending: dict[str, tuple[str, ...]] = {}
    for job in waiting:
        if job.job_id in doomed:
            continue
        unfinished = []
        for dep in job.after:
            state = finished.get(dep)
            if state == SUCCEEDED:
                continue
            if state is not None:
                doomed[job.job_id] = Cancel(job.job_id, DEPENDENCY_FAILED,
                                            f"job {dep} it waits for ended {state}")
                break
            if dep not in running_ids and dep not in by_id:
                doomed[job.job_id] = Cancel(job.job_id, DEPENDENCY_FAILED,
                                            f"job {dep} it waits for is unknown")
                break
            unfinished.append(dep)
            dependents.setdefault(dep, []).append(job.job_id)
        else:
            if unfinished:
                pending[job.job_id] = tuple(unfinished)
    # A job waiting for one cancelled here is cancelled too, down the chain.
    spread = deque(doomed)
    while spread:
        gone = spread.popleft()
        for job_id in dependents.get(gone, ()):
            if job_id not in doomed:
                doomed[job_id] = Cancel(job_id, DEPENDENCY_FAILED,
                                        f"job {gone} it waits for was cancelled")
                pending.pop(job_id, None)
                spread.append(job_id)
    # Jobs that wait for each other in a cycle (or for such a job) would wait forever: peel
    # off, as in a topological sort, those whose wait ends; what is left can never start.
    blocked = {job_id: sum(dep in pending for dep in deps) for job_id, deps in pending.items()}
    free = deque(job_id for job_id, count in blocked.items() if count == 0)
    while free:
        for job_id in dependents.get(free.popleft(), ()):
            if job_id in blocked:
                blocked[job_id] -= 1
                if blocked[job_id] == 0:
                    free.append(job_id)
    for job_id, count in blocked.items():
        if count:
            stuck = next(dep for dep in pending[job_id] if blocked.get(dep))
            doomed[job_id] = Cancel(job_id, DEPENDENCY_FAILED, f"job {stuck} it waits for "
                                    "can never start: the jobs wait for each other in a cycle")
    return {job_id: deps for job_id, deps in pending.items() if job_id not in doomed}


def plan(waiting: Sequence[Waiting], running: Sequence[Running], pool: Pool,
         usage: Mapping[str, float], finished: Mapping[str, str], now: datetime, *,
         gpu_weight: float = GPU_WEIGHT) -> Plan:
    """One planning round. `usage` is each owner's decayed usage (see `decayed_usage`);
    `finished` maps ended job ids to their final state ("succeeded", "failed", ...).
    A job depending on one that never succeeds, or one the pool can never hold, is
    cancelled; the rest start in fair order while they fit, or by backfill, or wait."""
    doomed: dict[str, Cancel] = {}
    for job in waiting:
        if not _fits(job.ask, pool.cpus, pool.memory_mib, len(pool.gpu_ids)):
            doomed[job.job_id] = Cancel(job.job_id, EXCEEDS_HOST, (
                f"it asks {_amount(job.ask.cpus, 'CPUs')}, {job.ask.memory_mib} MiB and "
                f"{job.ask.gpus} GPUs; this machine has {_amount(pool.cpus, 'CPUs')}, "
                f"{pool.memory_mib} MiB and {len(pool.gpu_ids)} GPUs"))
    pending = _dependencies(waiting, {job.job_id for job in running}, finished, doomed)
    order = fair_order((job for job in waiting
                        if job.job_id not in doomed and job.job_id not in pending),
                       usage, gpu_weight)

    devices = set(pool.gpu_ids)
    load = {device: Fraction(0) for device in devices}
    for job in running:
        for device in devices.intersection(job.gpu_ids):
            load[device] += Fraction(1, max(job.ask.gpu_share, 1))
    holding = [(job.started_at + timedelta(seconds=job.time_limit_seconds),
                Ask(job.ask.cpus, job.ask.memory_mib, len(devices.intersection(job.gpu_ids)),
                    job.ask.gpu_share))
               for job in running]
    free_cpus = pool.cpus - sum(job.ask.cpus for job in running)
    free_memory = pool.memory_mib - sum(job.ask.memory_mib for job in running)

    starts: list[Start] = []
    started: set[str] = set()
    blocker: Waiting | None = None
    shadow = now  # the blocker's estimated start; backfill must end by then
    for job in order:
        ask = job.ask
        given = _room(ask, free_cpus, free_memory, load)
        fits = given is not None
        if fits and blocker is not None:
            fits = now + timedelta(seconds=job.time_limit_seconds) <= shadow
        if not fits:
            if blocker is None:
                blocker = job
                shadow = _Timeline(pool, holding, now).reserve(ask, job.time_limit_seconds)
            continue
        assert given is not None
        for device in given:
            load[device] += Fraction(1, max(ask.gpu_share, 1))
        free_cpus -= ask.cpus
        free_memory -= ask.memory_mib
        starts.append(Start(job.job_id, given))
        started.add(job.job_id)
        holding.append((now + timedelta(seconds=job.time_limit_seconds), ask))

    places: list[Place] = []
    timeline = _Timeline(pool, holding, now)
    for job in order:
        if job.job_id in started:
            continue
        position = len(places) + 1
        estimate = timeline.reserve(job.ask, job.time_limit_seconds)
        if job is blocker:
            reason, detail = RESOURCES, _short(job.ask, free_cpus, free_memory, load)
        elif blocker is not None and _room(job.ask, free_cpus, free_memory, load) is not None:
            reason, detail = PRIORITY, (
                f"fits now, but its time limit runs past {shadow.isoformat()}, when job "
                f"{blocker.job_id} ahead of it should start")
        else:
            reason, detail = PRIORITY, (
                f"{position - 1} job{'s' if position > 2 else ''} ahead in fair-share order")
        places.append(Place(job.job_id, position, reason, detail, estimate))
    for job in sorted((j for j in waiting if j.job_id in pending),
                      key=lambda j: (j.submitted_at, j.job_id)):
        places.append(Place(job.job_id, len(places) + 1, DEPENDENCY,
                            "waits for job " + ", ".join(pending[job.job_id]) + " to succeed",
                            None))
    cancels = tuple(doomed[job.job_id] for job in waiting if job.job_id in doomed)
    return Plan(tuple(starts), cancels, tuple(places))


def _short(ask: Ask, cpus: float, memory: int, load: Mapping[str, Fraction]) -> str:
    """What the next job lacks now, for a person reading the queue."""
    lacking = []
    if ask.cpus > cpus + _EPS:
        lacking.append(f"{ask.cpus:g} CPUs ({max(cpus, 0):g} free)")
    if ask.memory_mib > memory:
        lacking.append(f"{ask.memory_mib} MiB of memory ({max(memory, 0)} free)")
    if _gpus_for(ask, load) is None:
        lacking.append(f"a 1/{ask.gpu_share} share of a GPU (none has room)"
                       if ask.gpu_share > 1 else f"{ask.gpus} GPUs ({_whole(load)} free)")
    return "next in line; waits for " + " and ".join(lacking)
