"""Revocation: which tokens, workloads and people the services refuse before a token expires.

Each service holds a snapshot merged from its own records and the feeds of the others
(`GET /api/v1/revocations`): the portal says which accounts are disabled and since when their
tokens count (a changed password, a disabled account), which tokens and workloads are revoked;
the dataset service says which people are revoked. The deciding part is pure
(`token_refusal`, `person_refusal`); `RevocationState` keeps the snapshot fresh, and refuses
people's requests once a feed has been unreachable for longer than its grace. The feed's
route, and the wiring of a service's feeds, are `vre.revocation_feed`: this module imports
neither the token validator nor the API layer, which both ask it."""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vre.client import ServiceError
from vre.errors import ApiError

if TYPE_CHECKING:
    from flask import Flask


@dataclass(frozen=True)
class SubjectState:
    """What holds for one token subject: tokens issued before `not_before` (epoch seconds)
    are refused, and a disabled account's are refused whenever they were issued."""

    not_before: float | None = None
    disabled: bool = False


@dataclass(frozen=True)
class Revocations:
    """One snapshot: subjects by token subject, revoked token ids (jti), revoked workload ids
    (the `wid` claim of a workload's token), and revoked people (user ids)."""

    subjects: Mapping[str, SubjectState] = field(default_factory=dict)
    tokens: frozenset[str] = frozenset()
    workloads: frozenset[str] = frozenset()
    people: frozenset[str] = frozenset()

    def merged(self, other: Revocations) -> Revocations:
        """Both snapshots at once: the later not_before and either's disabled flag win."""
        subjects = dict(self.subjects)
        for subject, state in other.subjects.items():
            mine = subjects.get(subject, SubjectState())
            befores = [t for t in (mine.not_before, state.not_before) if t is not None]
            subjects[subject] = SubjectState(
                max(befores) if befores else None, mine.disabled or state.disabled
            )
        return Revocations(
            subjects,
            self.tokens | other.tokens,
            self.workloads | other.workloads,
            self.people | other.people,
        )

    def to_json(self) -> dict[str, Any]:
        """The feed's answer."""
        return {
            "subjects": {
                s: {"not_before": v.not_before, "disabled": v.disabled}
                for s, v in sorted(self.subjects.items())
            },
            "tokens": sorted(self.tokens),
            "workloads": sorted(self.workloads),
            "people": sorted(self.people),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Revocations:
        """A feed's answer read back; anything malformed raises ValueError."""
        try:
            subjects = {
                str(s): SubjectState(
                    None if v.get("not_before") is None else float(v["not_before"]),
                    bool(v.get("disabled", False)),
                )
                for s, v in dict(data.get("subjects") or {}).items()
            }
            return cls(
                subjects,
                frozenset(map(str, data.get("tokens") or ())),
                frozenset(map(str, data.get("workloads") or ())),
                frozenset(map(str, data.get("people") or ())),
            )
        except (AttributeError, TypeError) as exc:
            raise ValueError(f"malformed revocation feed: {exc}") from exc


NOTHING = Revocations()


def token_refusal(claims: Mapping[str, Any], snapshot: Revocations) -> str | None:
    """Why a validly signed token must be refused anyway, or None to accept it."""
    if claims.get("jti") is not None and str(claims["jti"]) in snapshot.tokens:
        return "the token has been revoked"
    if claims.get("wid") is not None and str(claims["wid"]) in snapshot.workloads:
        return "the workload this token was issued to has been stopped"
    state = snapshot.subjects.get(str(claims.get("sub")))
    if state is None:
        return None
    if state.disabled:
        return "the account is disabled"
    issued = claims.get("iat")
    if state.not_before is not None and (
        not isinstance(issued, int | float) or issued < state.not_before
    ):
        return "the token was issued before the account's password or access changed"
    return None


def person_refusal(subject: str | None, snapshot: Revocations) -> str | None:
    """Why this person may not act (only public metadata is left to them), or None."""
    if subject is not None and subject in snapshot.people:
        return "the user's access has been revoked"
    return None


class RevocationsUnavailable(ApiError):
    """A feed has been unreachable for longer than its grace: people's requests wait."""

    status = 503
    code = "revocations_unavailable"


Loader = Callable[[], Revocations]


class CachedFeed:
    """One source of revocations, read again once `max_age` has passed; while it cannot be
    read, its last answer stands for `grace` seconds, then `get` raises."""

    def __init__(
        self,
        name: str,
        load: Loader,
        max_age: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._load = load
        self.max_age = max_age
        self.grace = grace
        self._clock = clock
        self._value: Revocations | None = None
        self._loaded_at = 0.0
        self._stale = True
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Read the source again at the next `get` (after a change made here)."""
        with self._lock:
            self._stale = True

    def get(self) -> Revocations:
        # Every request asks: a fresh snapshot is answered without the lock (each attribute
        # read is atomic; a reload under way answers the snapshot it replaces, as a caller
        # just before it would have had).
        value = self._value
        if value is not None and not self._stale \
                and self._clock() - self._loaded_at < self.max_age:
            return value
        with self._lock:
            now = self._clock()
            if not self._stale and now - self._loaded_at < self.max_age:
                assert self._value is not None
                return self._value
            try:
                self._value, self._loaded_at, self._stale = self._load(), now, False
                return self._value
            except (OSError, ValueError, ApiError, ServiceError) as exc:
                if self._value is not None and now - self._loaded_at < self.grace:
                    return self._value
                raise RevocationsUnavailable(
                    f"cannot tell whether the caller's access was revoked: the {self.name} "
                    f"revocation feed is unreachable ({exc})"
                ) from None


class RevocationState:
    """The snapshot a service decides with: its feeds merged."""

    def __init__(self, feeds: Iterable[CachedFeed] = ()) -> None:
        self.feeds = list(feeds)
        # The last merge and the feeds' snapshots it was made of: every request asks, and
        # the feeds change only when they are read again.
        self._merged: tuple[tuple[Revocations, ...], Revocations] = ((), NOTHING)

    def add(self, feed: CachedFeed) -> None:
        self.feeds.append(feed)

    def snapshot(self) -> Revocations:
        parts = tuple(feed.get() for feed in self.feeds)
        made_of, merged = self._merged
        if len(made_of) == len(parts) and all(map(operator.is_, made_of, parts)):
            return merged
        merged = NOTHING
        for part in parts:
            merged = merged.merged(part)
        self._merged = (parts, merged)
        return merged

    def invalidate(self) -> None:
        for feed in self.feeds:
            feed.invalidate()


def revocations_of(app: Flask) -> RevocationState | None:
    """The service's revocation state (None before `install`)."""
    return app.extensions.get("vre.revocations")
