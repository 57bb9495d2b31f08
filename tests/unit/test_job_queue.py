"""The fair queue for batch jobs, as tables and small simulations: who goes next between users
and within one, decayed usage, dependencies, GPUs, backfill and the estimates people see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from portal.compute import queue as q

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
CPU = q.Ask(cpus=1, memory_mib=1024)
GPU = q.Ask(cpus=1, memory_mib=1024, gpus=1)


def waiting(job_id: str, owner: str = "alice", minute: int = 0, ask: q.Ask = CPU,
            hours: float = 1, after: tuple[str, ...] = ()) -> q.Waiting:
    return q.Waiting(job_id, owner, T0 + timedelta(minutes=minute), ask, int(hours * 3600),
                     after)


def running(job_id: str, owner: str = "zed", started: timedelta = timedelta(0),
            ask: q.Ask = CPU, hours: float = 1, gpu_ids: tuple[str, ...] = ()) -> q.Running:
    return q.Running(job_id, owner, T0 + started, ask, int(hours * 3600), gpu_ids)


def started(plan: q.Plan) -> list[str]:
    return [start.job_id for start in plan.starts]


def place(plan: q.Plan, job_id: str) -> q.Place:
    return next(p for p in plan.places if p.job_id == job_id)


# --- fair share between users ------------------------------------------------------------

SUBMISSIONS = {
    # owner of each job in submission order; jobs are numbered per owner
    "alice all first": ["alice"] * 20 + ["bob"] * 20,
    "bob all first": ["bob"] * 20 + ["alice"] * 20,
    "interleaved": ["alice", "bob", "bob", "alice"] * 10,
    "bob then mixed": ["bob"] * 5 + ["alice", "bob"] * 15 + ["alice"] * 5,
}


@pytest.mark.parametrize("owners", SUBMISSIONS.values(), ids=SUBMISSIONS.keys())
@pytest.mark.parametrize("run_fraction", [1.0, 0.5], ids=["run to limit", "run half"])
def test_two_users_take_turns_and_positions_foretell_the_start_order(owners, run_fraction):
    """Room for one job; each round one job starts, runs and finishes, usage is decayed, and
    the queue is planned again. Starts alternate between the users, and the order the first
    plan showed (and each later plan's position 1) is the order jobs actually start in."""
    counts: dict[str, int] = {}
    jobs = []
    for minute, owner in enumerate(owners):
        counts[owner] = counts.get(owner, 0) + 1
        jobs.append(waiting(f"{owner}-{counts[owner]:02}", owner, minute))
    pool = q.Pool(cpus=1, memory_mib=4096)
    now, spent, finished, order = T0 + HOUR, [], {}, []
    foretold: list[str] = []
    next_in_line: str | None = None
    while jobs:
        plan = q.plan(jobs, [], pool, q.decayed_usage(spent, [], now), finished, now)
        assert len(plan.starts) == 1
        job = next(j for j in jobs if j.job_id == plan.starts[0].job_id)
        if not foretold:
            foretold = [job.job_id] + [p.job_id for p in plan.places]
        else:
            assert job.job_id == next_in_line, "position 1 of the last plan started"
        assert [p.position for p in plan.places] == list(range(1, len(plan.places) + 1))
        next_in_line = plan.places[0].job_id if plan.places else None
        order.append(job.job_id)
        jobs.remove(job)
        ran = job.time_limit_seconds * run_fraction
        now += timedelta(seconds=ran)
        spent.append(q.Spent(job.owner, now, q.cost(job.ask, ran)))
        finished[job.job_id] = q.SUCCEEDED
    assert order == foretold
    owners_in_turn = [job_id.split("-")[0] for job_id in order]
    assert all(a != b for a, b in pairwise(owners_in_turn))
    for owner in ("alice", "bob"):
        mine = [job_id for job_id in order if job_id.startswith(owner)]
        assert mine == sorted(mine), "one user's jobs go in submission order"


@pytest.mark.parametrize(("alice_spent", "bob_spent", "first"), [
    # alice's big usage was three half-lives ago (1000 -> 125); bob's 200 was yesterday
    ((1000, timedelta(days=21)), (200, timedelta(days=1)), "alice"),
    # the same amounts, both yesterday: bob used less
    ((1000, timedelta(days=1)), (200, timedelta(days=1)), "bob"),
    # equal usage at equal age: the older job goes first (bob's, submitted at minute 0)
    ((200, timedelta(days=1)), (200, timedelta(days=1)), "bob"),
    # no usage at all beats any
    ((0, timedelta(0)), (1, timedelta(days=70)), "alice"),
], ids=["old big beats recent small", "recent big loses", "tie to older job",
        "none beats a little"])
def test_older_usage_counts_less(alice_spent, bob_spent, first):
    now = T0 + HOUR
    spent = [q.Spent("alice", now - alice_spent[1], alice_spent[0]),
             q.Spent("bob", now - bob_spent[1], bob_spent[0])]
    usage = q.decayed_usage(spent, [], now)
    jobs = [waiting("b1", "bob", 0), waiting("a1", "alice", 1)]
    plan = q.plan(jobs, [], q.Pool(1, 4096), usage, {}, now)
    assert started(plan) == [f"{first[0]}1"]


@pytest.mark.parametrize(("spent", "running", "expected"), [
    ([q.Spent("a", T0, 800.0)], [], {"a": 800.0}),
    ([q.Spent("a", T0 - timedelta(days=7), 800.0)], [], {"a": 400.0}),
    ([q.Spent("a", T0 - timedelta(days=21), 800.0)], [], {"a": 100.0}),
    ([q.Spent("a", T0 + HOUR, 800.0)], [], {"a": 800.0}),  # clock skew never grows usage
    # a running job counts what it used so far: 2 CPUs for an hour
    ([], [running("r", "a", -HOUR, q.Ask(2, 1024))], {"a": 7200.0}),
    # a GPU weighs GPU_WEIGHT CPUs; the devices held count
    ([], [running("r", "a", -HOUR, GPU, gpu_ids=("0",))], {"a": (1 + q.GPU_WEIGHT) * 3600}),
    ([q.Spent("a", T0, 1.0), q.Spent("b", T0, 2.0), q.Spent("a", T0, 3.0)], [],
     {"a": 4.0, "b": 2.0}),
], ids=["just ended", "one half-life", "three half-lives", "future end", "running so far",
        "running gpu", "summed per owner"])
def test_decayed_usage(spent, running, expected):
    usage = q.decayed_usage(spent, running, T0)
    assert usage == pytest.approx(expected)


def test_one_users_jobs_go_in_submission_order_ties_by_id():
    jobs = [waiting("j3", minute=5), waiting("j2", minute=1), waiting("j1", minute=5),
            waiting("j0", minute=9)]
    plan = q.plan(jobs, [], q.Pool(1, 4096), {}, {}, T0)
    assert started(plan) == ["j2"]
    assert [p.job_id for p in plan.places] == ["j1", "j3", "j0"]
    assert [p.reason for p in plan.places] == [q.RESOURCES, q.PRIORITY, q.PRIORITY]


# --- dependencies --------------------------------------------------------------------------

@pytest.mark.parametrize(("dep_state", "dep_running", "outcome"), [
    ("succeeded", False, "start"),
    (None, True, q.DEPENDENCY),  # still running
    ("failed", False, "cancel"),
    ("cancelled", False, "cancel"),
    ("timeout", False, "cancel"),
    (None, False, "cancel"),  # never heard of
], ids=["succeeded", "running", "failed", "cancelled", "other end", "unknown"])
def test_a_job_waits_for_its_dependency_and_is_cancelled_when_it_did_not_succeed(
        dep_state, dep_running, outcome):
    finished = {"dep": dep_state} if dep_state else {}
    runs = [running("dep", started=-timedelta(minutes=5))] if dep_running else []
    jobs = [waiting("job", after=("dep",))]
    plan = q.plan(jobs, runs, q.Pool(4, 8192), {}, finished, T0)
    if outcome == "start":
        assert started(plan) == ["job"] and not plan.cancels and not plan.places
    elif outcome == "cancel":
        assert started(plan) == [] and not plan.places
        (cancel,) = plan.cancels
        assert cancel.job_id == "job" and cancel.code == q.DEPENDENCY_FAILED
        assert "job dep" in cancel.reason
        assert (dep_state or "unknown") in cancel.reason
    else:
        assert started(plan) == [] and not plan.cancels
        (waits,) = plan.places
        assert (waits.reason, waits.estimated_start) == (q.DEPENDENCY, None)
        assert "dep" in waits.detail


def test_a_cancelled_dependency_cancels_its_chain_and_names_the_job_before():
    jobs = [waiting("b", after=("a",)), waiting("c", minute=1, after=("b",)),
            waiting("d", minute=2, after=("ok", "c")), waiting("e", minute=3, after=("ok",))]
    plan = q.plan(jobs, [], q.Pool(4, 8192), {}, {"a": "failed", "ok": "succeeded"}, T0)
    reasons = {c.job_id: c.reason for c in plan.cancels}
    assert set(reasons) == {"b", "c", "d"}
    assert "job a" in reasons["b"] and "failed" in reasons["b"]
    assert "job b" in reasons["c"] and "job c" in reasons["d"]
    assert {c.code for c in plan.cancels} == {q.DEPENDENCY_FAILED}
    assert started(plan) == ["e"]


@pytest.mark.parametrize(("jobs", "cancelled"), [
    ([waiting("self", after=("self",))], {"self"}),
    ([waiting("a", after=("b",)), waiting("b", minute=1, after=("a",)),
      waiting("c", minute=2, after=("b",)), waiting("d", minute=3, after=("e",)),
      waiting("e", minute=4)], {"a", "b", "c"}),
], ids=["on itself", "pair and one behind it"])
def test_jobs_waiting_for_each_other_in_a_cycle_are_cancelled(jobs, cancelled):
    plan = q.plan(jobs, [], q.Pool(1, 8192), {}, {}, T0)
    assert {c.job_id for c in plan.cancels} == cancelled
    assert all(c.code == q.DEPENDENCY_FAILED and "cycle" in c.reason for c in plan.cancels)
    left = {job.job_id for job in jobs} - cancelled
    assert set(started(plan)) | {p.job_id for p in plan.places} == left


def test_dependency_waiters_are_listed_after_eligible_jobs():
    jobs = [waiting("then", minute=0, after=("first",)), waiting("first", minute=1),
            waiting("other", "bob", minute=2)]
    plan = q.plan(jobs, [], q.Pool(1, 8192), {}, {}, T0)
    assert started(plan) == ["first"]
    assert [(p.job_id, p.position, p.reason) for p in plan.places] == [
        ("other", 1, q.RESOURCES), ("then", 2, q.DEPENDENCY)]


def test_a_job_larger_than_the_machine_is_cancelled_not_left_to_block_the_queue():
    jobs = [waiting("huge", ask=q.Ask(64, 1024)), waiting("gpu", minute=1, ask=GPU),
            waiting("small", minute=2)]
    plan = q.plan(jobs, [], q.Pool(8, 8192), {}, {}, T0)
    assert {c.job_id: c.code for c in plan.cancels} == {"huge": q.EXCEEDS_HOST,
                                                        "gpu": q.EXCEEDS_HOST}
    assert started(plan) == ["small"]


# --- resources, GPUs and backfill ----------------------------------------------------------

def test_gpu_jobs_get_distinct_free_devices_lowest_first():
    pool = q.Pool(16, 65536, ("0", "1", "2", "3", "10"))
    runs = [running("r", ask=GPU, gpu_ids=("1",))]
    jobs = [waiting("one", ask=GPU), waiting("two", minute=1, ask=q.Ask(1, 1024, 2)),
            waiting("more", minute=2, ask=q.Ask(1, 1024, 2))]
    plan = q.plan(jobs, runs, pool, {}, {}, T0)
    assert [(s.job_id, s.gpu_ids) for s in plan.starts] == [("one", ("0",)),
                                                          ("two", ("2", "3"))]
    (waits,) = plan.places
    assert (waits.job_id, waits.reason) == ("more", q.RESOURCES)
    assert "2 GPUs (1 free)" in waits.detail
    assert waits.estimated_start == T0 + HOUR  # when "r" frees device 1


SHARED = q.Ask(cpus=1, memory_mib=1024, gpus=1, gpu_share=4)


def test_jobs_of_a_sharing_flavor_run_together_on_one_gpu_up_to_its_share():
    """Four quarter-GPU jobs fit on device 0 together; the fifth goes to device 1, and a
    job that needs a GPU to itself waits for a device nobody shares."""
    pool = q.Pool(cpus=16, memory_mib=65536, gpu_ids=("0", "1"))
    jobs = [waiting(f"s{n}", minute=n, ask=SHARED) for n in range(5)]
    jobs.append(waiting("whole", minute=9, ask=GPU))
    plan = q.plan(jobs, [], pool, {}, {}, T0)
    given = {s.job_id: s.gpu_ids for s in plan.starts}
    assert [given[f"s{n}"] for n in range(5)] == [("0",)] * 4 + [("1",)]
    assert "whole" not in given
    whole = place(plan, "whole")
    assert whole.reason == q.RESOURCES and "1 GPUs (0 free)" in whole.detail


def test_a_sharing_job_fills_a_shared_gpu_before_taking_a_free_one():
    pool = q.Pool(cpus=16, memory_mib=65536, gpu_ids=("0", "1", "2"))
    runs = [running("r1", ask=SHARED, gpu_ids=("2",)), running("r2", ask=GPU, gpu_ids=("0",))]
    plan = q.plan([waiting("s", ask=SHARED), waiting("w", minute=1, ask=GPU)], runs, pool,
                  {}, {}, T0)
    assert [(s.job_id, s.gpu_ids) for s in plan.starts] == [("s", ("2",)), ("w", ("1",))]


def test_a_gpu_held_whole_takes_no_share_and_a_full_share_waits():
    pool = q.Pool(cpus=16, memory_mib=65536, gpu_ids=("0",))
    for runs in ([running("r", ask=GPU, gpu_ids=("0",))],
                 [running(f"r{n}", ask=SHARED, gpu_ids=("0",)) for n in range(4)]):
        plan = q.plan([waiting("s", ask=SHARED)], runs, pool, {}, {}, T0)
        assert started(plan) == []
        assert "share of a GPU (none has room)" in place(plan, "s").detail


def test_a_share_of_a_gpu_costs_its_share_in_fair_share():
    assert q.cost(SHARED, 3600) == (1 + q.GPU_WEIGHT / 4) * 3600 < q.cost(GPU, 3600)


@pytest.mark.parametrize(("cpu_hours", "backfilled"), [
    (1, True), (2, True), (3, False),
], ids=["ends before the gpu job", "ends exactly then", "would delay it"])
def test_cpu_jobs_pass_a_waiting_gpu_job_only_if_they_end_before_it_starts(cpu_hours,
                                                                          backfilled):
    pool = q.Pool(8, 65536, ("0",))
    runs = [running("r", ask=GPU, hours=2, gpu_ids=("0",))]
    jobs = [waiting("gpu", ask=GPU, hours=4), waiting("cpu", minute=1, hours=cpu_hours)]
    plan = q.plan(jobs, runs, pool, {}, {}, T0)
    gpu = place(plan, "gpu")
    assert (gpu.position, gpu.reason, gpu.estimated_start) == (1, q.RESOURCES, T0 + 2 * HOUR)
    assert started(plan) == (["cpu"] if backfilled else [])
    if not backfilled:
        cpu = place(plan, "cpu")
        assert (cpu.position, cpu.reason) == (2, q.PRIORITY)
        assert "job gpu" in cpu.detail
        assert cpu.estimated_start == gpu.estimated_start


def test_backfill_takes_only_what_is_free_now():
    pool = q.Pool(4, 65536, ("0",))
    runs = [running("r", ask=q.Ask(2, 1024, 1), hours=2, gpu_ids=("0",))]
    jobs = [waiting("gpu", ask=GPU), waiting("a", minute=1), waiting("wide", minute=2,
                                                                     ask=q.Ask(2, 1024)),
            waiting("b", minute=3)]
    plan = q.plan(jobs, runs, pool, {}, {}, T0)
    assert started(plan) == ["a", "b"]
    assert [(p.job_id, p.reason) for p in plan.places] == [("gpu", q.RESOURCES),
                                                           ("wide", q.PRIORITY)]


def test_a_blocked_job_blocks_later_ones_from_any_user():
    pool = q.Pool(4, 8192)
    runs = [running("r", ask=q.Ask(2, 1024), hours=1)]
    jobs = [waiting("big", "alice", ask=q.Ask(4, 1024)), waiting("long", "bob", 1, hours=2)]
    plan = q.plan(jobs, runs, pool, {}, {}, T0)
    assert started(plan) == []
    assert [(p.job_id, p.estimated_start) for p in plan.places] == [
        ("big", T0 + HOUR), ("long", T0 + 2 * HOUR)]


@pytest.mark.parametrize(("runs", "jobs", "expected"), [
    # two CPUs busy until +1h and +2h: three one-hour jobs follow them in turn
    ([running("r1", ask=CPU, hours=1), running("r2", ask=CPU, hours=2)],
     [waiting("a", minute=0), waiting("b", minute=1), waiting("c", minute=2)],
     {"a": 1, "b": 2, "c": 2}),
    # a two-CPU job waits for both; the one behind it is never estimated before it
    ([running("r1", ask=CPU, hours=1), running("r2", ask=CPU, hours=3)],
     [waiting("wide", ask=q.Ask(2, 1024)), waiting("small", minute=1)],
     {"wide": 3, "small": 4}),
    # a job already past its time limit is expected to end any moment
    ([running("late", ask=q.Ask(2, 1024), started=-3 * HOUR, hours=1)],
     [waiting("a")], {"a": 0}),
    # memory, not CPUs, is what is short
    ([running("r1", ask=q.Ask(0.5, 3072), hours=2)],
     [waiting("a", ask=q.Ask(0.5, 2048))], {"a": 2}),
], ids=["queue of one-cpu jobs", "wide job first", "overdue job", "memory"])
def test_estimated_starts_follow_running_jobs_time_limits(runs, jobs, expected):
    plan = q.plan(jobs, runs, q.Pool(2, 4096), {}, {}, T0)
    assert started(plan) == []
    assert {p.job_id: p.estimated_start for p in plan.places} == {
        job_id: T0 + hours * HOUR for job_id, hours in expected.items()}
    estimates = [p.estimated_start for p in plan.places]
    assert estimates == sorted(estimates)


def test_planned_starts_count_against_what_is_free_in_the_same_round():
    jobs = [waiting(f"j{n}", minute=n, ask=q.Ask(1.5, 1024)) for n in range(4)]
    plan = q.plan(jobs, [], q.Pool(4.5, 8192), {}, {}, T0)
    assert started(plan) == ["j0", "j1", "j2"]
    assert place(plan, "j3").estimated_start == T0 + HOUR


# --- scale ---------------------------------------------------------------------------------

def test_ten_thousand_jobs_from_fifty_users():
    owners = [f"user{n:02}" for n in range(50)]
    jobs = [waiting(f"job{n:05}", owners[n % 50], minute=n // 7,
                    ask=q.Ask(1 + n % 3, 1024)) for n in range(10_000)]
    usage = {owner: float(n) for n, owner in enumerate(owners)}  # user00 least used
    plan = q.plan(jobs, [], q.Pool(8, 65536), usage, {}, T0)
    by_id = {job.job_id: job for job in jobs}
    order = [job.job_id for job in q.fair_order(jobs, usage)]
    # the first fifty in line are one job from each user, least used first, oldest job first
    assert [by_id[j].owner for j in order[:50]] == owners
    assert order[0] == "job00000"
    for owner in owners[:3]:
        mine = [j for j in order if by_id[j].owner == owner]
        assert mine == sorted(mine, key=lambda j: (by_id[j].submitted_at, j))
    assert sum(by_id[s.job_id].ask.cpus for s in plan.starts) <= 8
    assert started(plan)[:4] == order[:4]  # 1 + 2 + 3 + 1 CPUs fit; then backfill
    assert [p.job_id for p in plan.places] == [j for j in order if j not in started(plan)]
    assert [p.position for p in plan.places] == list(range(1, len(plan.places) + 1))
    estimates = [p.estimated_start for p in plan.places]
    assert estimates == sorted(estimates)
