"""Rate limits on sign-in and on the client-credentials grant: a sliding window per client
address, and one per address and name together, in process (one portal process per machine;
behind several replicas each keeps its own count).

Never per name alone: then anyone could keep an account from signing in at will, which is the
lock-out this replaces."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from flask import Flask, render_template

from vre.errors import ApiError, error_response, wants_json

WINDOW_SECONDS = 60.0


class RateLimited(ApiError):
    """Too many attempts; `retry_after` says in how many seconds the next one is allowed."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class SlidingWindow:
    """At most `limit` events per key within any `window` seconds."""

    def __init__(self, limit: int, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def hit(self, key: str) -> float:
        """Record an event for key and return 0, or return seconds to wait and record nothing."""
        now = self._clock()
        with self._lock:
            self._calls += 1
            if self._calls % 1024 == 0:
                self._prune(now)
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return events[0] + self.window - now
            events.append(now)
            return 0.0

    def _prune(self, now: float) -> None:
        # Keys of clients that went quiet would otherwise be kept for ever.
        stale = [k for k, ev in self._events.items() if not ev or ev[-1] <= now - self.window]
        for key in stale:
            del self._events[key]


class SignInLimiter:
    """Sign-in attempts allowed per client address, and per address and name together."""

    def __init__(self, per_address: int, per_user: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.by_address = SlidingWindow(per_address, clock=clock)
        self.by_address_and_name = SlidingWindow(per_user, clock=clock)

    def check(self, address: str | None, username: str | None) -> None:
        """Count one attempt, or raise RateLimited if the address, or the address with this
        name, has too many."""
        address = address or "unknown"
        wait = self.by_address.hit(address)
        if not wait and username:
            wait = self.by_address_and_name.hit(f"{address}\x00{username.lower()}")
        if wait:
            raise RateLimited("too many sign-in attempts; wait a little and try again", wait)

    def check_client(self, address: str | None, client_id: str | None) -> None:
        """The same for the client-credentials grant: a service's secret is guessed no
        faster than a password."""
        self.check(address, f"client:{client_id or ''}")


def install_limiter(app: Flask, limiter: SignInLimiter) -> None:
    """Keep the limiter on the app and answer RateLimited with 429 and Retry-After."""
    app.extensions["vre.signin_limiter"] = limiter

    @app.errorhandler(RateLimited)
    def _rate_limited(err: RateLimited) -> Any:
        if wants_json():
            response = error_response(err)
        else:
            response = app.make_response((render_template("error.html", error=err), err.status))
        response.headers["Retry-After"] = str(err.retry_after)
        return response


def limiter_of(app: Flask) -> SignInLimiter:
    """The sign-in limiter of the portal app."""
    return app.extensions["vre.signin_limiter"]
