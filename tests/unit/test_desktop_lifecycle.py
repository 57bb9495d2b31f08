"""When a running desktop must end, as tables: revoked owners, ended grants and invalidated
datasets; its expiry and extensions; warning and culling the idle ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from portal.compute import lifecycle as lc

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def running(wid: str, owner: str = "alice", grant: str | None = "g-ok") -> lc.Running:
    return lc.Running(wid, owner, grant, ("ds-1",))


GRANTS = {"g-ok": lc.OpenGrant("g-ok"), "g-bad": lc.OpenGrant("g-bad", ("ds-1",)),
          "g-ok2": lc.OpenGrant("g-ok2")}


@pytest.mark.parametrize(("workload", "revoked", "grants", "expected"), [
    (running("w1"), frozenset(), GRANTS, None),
    (running("w1", owner="mallory"), frozenset({"mallory"}), GRANTS, lc.OWNER_REVOKED),
    (running("w1", owner="mallory"), frozenset({"mallory"}), None, lc.OWNER_REVOKED),
    (running("w1", grant="g-bad"), frozenset(), GRANTS, lc.DATASET_INVALIDATED),
    (running("w1", grant="g-gone"), frozenset(), GRANTS, lc.GRANT_ENDED),
    # the dataset service could not be asked: nothing stops on its account
    (running("w1", grant="g-gone"), frozenset(), None, None),
    (running("w1", grant="g-bad"), frozenset(), None, None),
    # a workload without a grant (a job with no data) stops only for its owner
    (running("w1", grant=None), frozenset(), GRANTS, None),
    (running("w1", grant=None), frozenset({"alice"}), GRANTS, lc.OWNER_REVOKED),
    # revocation names the owner, not someone else with the same grant
    (running("w1"), frozenset({"bob"}), GRANTS, None),
    # a revoked owner of invalidated data: revocation is the reason given
    (running("w1", grant="g-bad"), frozenset({"alice"}), GRANTS, lc.OWNER_REVOKED),
])
def test_which_workloads_must_stop(workload: lc.Running, revoked: frozenset[str],
                                   grants: dict | None, expected: str | None) -> None:
    stops = lc.must_stop([workload, running("other", owner="carol", grant="g-ok2")],
                         revoked, grants)
    assert stops == ({} if expected is None else {workload.id: expected})


def test_an_empty_grant_list_stops_every_workload_holding_a_grant() -> None:
    stops = lc.must_stop([running("w1"), running("w2", grant=None)], frozenset(), {})
    assert stops == {"w1": lc.GRANT_ENDED}


@pytest.mark.parametrize(("flavor_minutes", "cap_hours", "expected"), [
    (60, 24, T0 + 60 * MIN),
    (60 * 48, 24, T0 + timedelta(hours=24)),  # the flavor allows more than the cap
    (30, 0.25, T0 + 15 * MIN),
])
def test_a_desktop_first_expires_after_its_flavor_run_within_the_cap(
        flavor_minutes: int, cap_hours: float, expected: datetime) -> None:
    assert lc.first_expiry(T0, flavor_minutes * 60, timedelta(hours=cap_hours)) == expected


@pytest.mark.parametrize(("expires", "expected"), [
    (T0 + 60 * MIN, T0 + 120 * MIN),  # one step later
    (T0 + 150 * MIN, T0 + 180 * MIN),  # clipped to the cap
    (T0 + 10 * MIN, T0 + 70 * MIN),  # a step from the current expiry, not from now
])
def test_an_extension_moves_the_expiry_a_step_up_to_the_cap(expires: datetime,
                                                           expected: datetime) -> None:
    assert lc.extended(T0, expires, 60 * MIN, timedelta(hours=3)) == expected


@pytest.mark.parametrize("expires", [T0 + timedelta(hours=3), T0 + timedelta(hours=4)])
def test_an_extension_at_the_cap_is_refused(expires: datetime) -> None:
    with pytest.raises(lc.ExtendRefused) as refused:
        lc.extended(T0, expires, 60 * MIN, timedelta(hours=3))
    assert refused.value.code == "lifetime_limit"


IDLE, GRACE = 30 * MIN, 10 * MIN
NOW = T0 + 5 * 60 * MIN
LEASE = timedelta(seconds=lc.VIEWER_LEASE_SECONDS)


@pytest.mark.parametrize(("activity", "warned", "expected"), [
    # a viewer connected right now: never idle, and a warning is cleared
    (lc.Activity(T0, viewer_seen_at=NOW - LEASE / 2), None, lc.IdleVerdict()),
    (lc.Activity(T0, viewer_seen_at=NOW - LEASE / 2), NOW - MIN, lc.IdleVerdict()),
    # never opened, started long ago: warned now, culled after the grace
    (lc.Activity(T0), None, lc.IdleVerdict(NOW, NOW + GRACE)),
    # never opened, but started recently: not idle yet
    (lc.Activity(NOW - 5 * MIN), None, lc.IdleVerdict()),
    # the viewer left 20 minutes ago: not idle yet
    (lc.Activity(T0, viewer_seen_at=NOW - 20 * MIN), None, lc.IdleVerdict()),
    # input 20 minutes ago keeps it alive although the viewer was seen long before
    (lc.Activity(T0, viewer_seen_at=NOW - 60 * MIN, input_at=NOW - 20 * MIN), None,
     lc.IdleVerdict()),
    # a warning stands and keeps its time while still idle
    (lc.Activity(T0, viewer_seen_at=NOW - 40 * MIN), NOW - 5 * MIN,
     lc.IdleVerdict(NOW - 5 * MIN, NOW + 5 * MIN)),
    # still idle after the grace: stop
    (lc.Activity(T0, viewer_seen_at=NOW - 60 * MIN), NOW - GRACE,
     lc.IdleVerdict(NOW - GRACE, NOW, stop=True)),
    # used after the warning, then idle long enough again: a fresh warning, not a stop
    (lc.Activity(T0, viewer_seen_at=NOW - 31 * MIN), NOW - 45 * MIN,
     lc.IdleVerdict(NOW, NOW + GRACE)),
    # used after the warning and not idle since: the warning is cleared
    (lc.Activity(T0, input_at=NOW - 2 * MIN), NOW - 10 * MIN, lc.IdleVerdict()),
    # a report older than the lease no longer counts as a viewer connected
    (lc.Activity(T0, viewer_seen_at=NOW - IDLE - LEASE), None, lc.IdleVerdict(NOW, NOW + GRACE)),
])
def test_idle_desktops_are_warned_then_stopped(activity: lc.Activity, warned: datetime | None,
                                               expected: lc.IdleVerdict) -> None:
    assert lc.idle_verdict(activity, warned, NOW, IDLE, GRACE) == expected


def test_without_grace_an_idle_desktop_stops_at_once() -> None:
    verdict = lc.idle_verdict(lc.Activity(T0), None, NOW, IDLE, timedelta(0))
    assert verdict.stop and verdict.culls_at == NOW


def test_last_activity_is_the_latest_sign_of_use() -> None:
    assert lc.Activity(T0).last() is None
    assert lc.Activity(T0, viewer_seen_at=NOW, input_at=NOW - MIN).last() == NOW
    assert lc.Activity(T0, input_at=NOW).last() == NOW
