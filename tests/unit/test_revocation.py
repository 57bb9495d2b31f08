"""The revocation decisions (a table of claims against a snapshot), the feed cache with its
grace, and the feeds a service reads by configuration."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from vre.revocation import (
    CachedFeed,
    Revocations,
    RevocationsUnavailable,
    SubjectState,
    person_refusal,
    token_refusal,
)

SNAPSHOT = Revocations(
    subjects={"changed": SubjectState(not_before=1000.5), "gone": SubjectState(disabled=True)},
    tokens=frozenset({"jti-revoked"}),
    workloads=frozenset({"desktop-1"}),
    people=frozenset({"revoked-person"}),
)


@pytest.mark.parametrize(
    "name,claims,refused",
    [
        ("unknown subject", {"sub": "alice", "iat": 1, "jti": "j"}, False),
        ("revoked token", {"sub": "alice", "iat": 1, "jti": "jti-revoked"}, True),
        ("stopped workload", {"sub": "alice", "iat": 1, "wid": "desktop-1"}, True),
        ("other workload", {"sub": "alice", "iat": 1, "wid": "desktop-2"}, False),
        ("disabled account", {"sub": "gone", "iat": 5000}, True),
        ("issued before the change", {"sub": "changed", "iat": 1000.4}, True),
        ("issued after the change", {"sub": "changed", "iat": 1000.6}, False),
        ("no issue time", {"sub": "changed"}, True),
        ("revoked person, valid token", {"sub": "revoked-person", "iat": 1}, False),
    ],
)
def test_token_refusal(name: str, claims: dict, refused: bool) -> None:
    assert (token_refusal(claims, SNAPSHOT) is not None) is refused, name


def test_person_refusal() -> None:
    assert person_refusal("revoked-person", SNAPSHOT)
    assert person_refusal("alice", SNAPSHOT) is None and person_refusal(None, SNAPSHOT) is None


def test_snapshots_merge_and_round_trip() -> None:
    other = Revocations(
        subjects={
            "changed": SubjectState(not_before=2000.0, disabled=False),
            "new": SubjectState(not_before=3.0),
        },
        tokens=frozenset({"jti-2"}),
    )
    merged = SNAPSHOT.merged(other)
    assert merged.subjects["changed"] == SubjectState(not_before=2000.0)
    assert merged.subjects["gone"].disabled and merged.tokens == {"jti-revoked", "jti-2"}
    assert Revocations.from_json(merged.to_json()) == merged
    with pytest.raises(ValueError):
        Revocations.from_json({"subjects": {"x": "not an object"}})


class Source:
    """A feed's far side: answers with `value`, or fails while `down`."""

    def __init__(self) -> None:
        self.value, self.down, self.reads = Revocations(), False, 0

    def __call__(self) -> Revocations:
        self.reads += 1
        if self.down:
            raise OSError("connection refused")
        return self.value


def feed(source: Source, now: list[float]) -> CachedFeed:
    return CachedFeed("portal", source, max_age=5, grace=60, clock=lambda: now[0])


def test_a_feed_is_read_again_after_its_max_age_or_a_change_here() -> None:
    source, now = Source(), [0.0]
    cached = feed(source, now)
    cached.get()
    now[0] = 4.0
    cached.get()
    assert source.reads == 1
    cached.invalidate()
    cached.get()
    assert source.reads == 2
    source.value = SNAPSHOT
    now[0] = 9.5
    assert cached.get() == SNAPSHOT and source.reads == 3


def test_an_unreachable_feed_stands_for_its_grace_then_refuses() -> None:
    source, now = Source(), [0.0]
    source.value = SNAPSHOT
    cached = feed(source, now)
    assert cached.get() == SNAPSHOT
    source.down = True
    now[0] = 59.0
    assert cached.get() == SNAPSHOT, "the last answer stands while the grace lasts"
    now[0] = 61.0
    with pytest.raises(RevocationsUnavailable) as refused:
        cached.get()
    assert refused.value.status == 503 and "portal" in refused.value.message
    source.down = False
    assert cached.get() == SNAPSHOT


def test_a_feed_never_read_refuses_at_once() -> None:
    source = Source()
    source.down = True
    with pytest.raises(RevocationsUnavailable):
        feed(source, [0.0]).get()


def test_services_read_the_feeds_their_configuration_names(
    make_app: Callable[[str], Flask], config
) -> None:
    app = make_app("tracer")
    assert [f.name for f in app.extensions["vre.revocations"].feeds] == []
    from tracer.app import create_app

    linked = create_app(config.model_copy(update={"revocation_feeds": "portal,dataset_service"}))
    try:
        assert [f.name for f in linked.extensions["vre.revocations"].feeds] == [
            "portal",
            "dataset_service",
        ]
        assert (
            linked.extensions["vre.validator"].revocations is linked.extensions["vre.revocations"]
        )
    finally:
        linked.extensions["vre.db"].engine.dispose()
