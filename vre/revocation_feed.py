"""A service's revocation feed (`GET /api/v1/revocations`), the client that reads the other
services' feeds, and `install`, which gives a service its revocation state from both. The
state and the decisions are `vre.revocation`; this module sits above it and `vre.api`."""

from __future__ import annotations

from flask import Blueprint, Flask
from pydantic import BaseModel

from vre.api import endpoint
from vre.client import ServiceClient
from vre.revocation import CachedFeed, Loader, Revocations, RevocationState
from vre.service_auth import TokenSource


class SubjectOut(BaseModel):
    not_before: float | None
    disabled: bool


class RevocationsOut(BaseModel):
    """A service's own revocations, as its feed answers them."""

    subjects: dict[str, SubjectOut]
    tokens: list[str]
    workloads: list[str]
    people: list[str]


class FeedClient(ServiceClient):
    """Reads another service's revocation feed, as this service."""

    def revocations(self) -> Revocations:
        return Revocations.from_json(self._call("GET", "/api/v1/revocations"))


def install(app: Flask, own: Loader | None, tokens: TokenSource | None) -> RevocationState:
    """Give the service its revocation state: its own records (`own`, also served as its
    feed) and the feeds the configuration names, read with the service's `tokens`."""
    config = app.extensions["vre.config"]
    name = app.extensions["vre.service"]

    def feed(source: str, load: Loader) -> CachedFeed:
        return CachedFeed(
            source, load, config.revocation_max_age_seconds, config.revocation_grace_seconds
        )

    state = RevocationState()
    if own is not None:
        state.add(feed(name, own))
        bp = Blueprint("revocations", __name__)

        @bp.get("/api/v1/revocations")
        @endpoint(
            "What this service revokes: accounts, tokens, workloads, people",
            response=RevocationsOut,
            roles=["service"],
            tags=["revocations"],
        )
        def revocations() -> RevocationsOut:
            return RevocationsOut.model_validate(own().to_json())

        app.register_blueprint(bp)
    for source in config.revocation_feed_names:
        if source != name:
            client = FeedClient(config.url_of(source), tokens, timeout=3.0)
            state.add(feed(source, client.revocations))
    app.extensions["vre.revocations"] = state
    app.extensions["vre.validator"].revocations = state
    return state
