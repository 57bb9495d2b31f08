"""Services that read each other's revocation feeds over real HTTP, as `vre up` wires them:
the test configuration names no feeds (each service reads only its own records), so tests
of the feeds link the services they serve."""

from __future__ import annotations

from flask import Flask

from vre.revocation import CachedFeed, revocations_of
from vre.revocation_feed import FeedClient
from vre.service_auth import TokenSource


def read_feed(
    app: Flask,
    source: str,
    url: str,
    tokens: TokenSource,
    max_age: float = 0.0,
    grace: float = 60.0,
) -> CachedFeed:
    """Make the app read another service's feed at url (fresh on every request by default)."""
    feed = CachedFeed(source, FeedClient(url, tokens, timeout=3.0).revocations, max_age, grace)
    state = revocations_of(app)
    assert state is not None
    state.add(feed)
    return feed
