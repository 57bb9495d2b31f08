"""A cache of the public pages the portal renders for anonymous visitors (the catalogue and
landing pages): the same for everyone, asked for again and again, and each one costs a search
or a record at the dataset service and the drawing of a page. A page is kept with the
catalogue's generation it was drawn at and served again only while the dataset service
still names that generation, so any change to a public record, made through this portal or
not, shows at the next anonymous request. Signed-in pages are never cached."""

from __future__ import annotations

from typing import NamedTuple

from flask import Flask, Response, current_app, g, request
from flask_login import current_user

from portal import clients
from vre.cache import TimedCache
from vre.client import ServiceError

CACHED_ENDPOINTS = frozenset({"catalogue.catalogue", "catalogue.landing", "catalogue.export"})
MAX_ENTRIES = 2_000


class Page(NamedTuple):
    """What a page kept: the catalogue generation it was drawn at, status, headers, body."""

    generation: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _cacheable() -> bool:
    return (request.method == "GET" and request.endpoint in CACHED_ENDPOINTS
            and not current_user.is_authenticated)


def _current_generation() -> str | None:
    """The catalogue's generation now; None when the dataset service cannot say (then no
    page is served from, or kept in, the cache)."""
    try:
        return clients.datasets(as_user=False).catalogue_generation()
    except ServiceError:
        return None


def install(app: Flask, seconds: int) -> None:
    """Serve anonymous public pages from the cache while the catalogue has not changed, and
    keep what they rendered. `seconds` bounds how long an unused page stays."""
    if seconds <= 0:
        return
    cache: TimedCache[Page] = TimedCache(seconds, MAX_ENTRIES)
    app.extensions["portal.page_cache"] = cache

    @app.before_request
    def _from_cache() -> Response | None:
        if not _cacheable():
            return None
        # Read before drawing: a page is never kept under a generation newer than its own.
        g.page_generation = generation = _current_generation()
        page = cache.get(request.full_path)
        if page is None or generation is None or page.generation != generation:
            return None
        response = Response(page.body, status=page.status, headers=page.headers)
        response.headers["X-Page-Cache"] = "hit"
        return response

    @app.after_request
    def _keep(response: Response) -> Response:
        # A response that sets a cookie is someone's; only plain public answers are kept.
        generation = g.get("page_generation")
        if generation is not None and response.status_code == 200 and _cacheable() \
                and "X-Page-Cache" not in response.headers \
                and "Set-Cookie" not in response.headers and not response.direct_passthrough:
            cache.put(request.full_path, Page(generation, response.status_code,
                                              list(response.headers.items()),
                                              response.get_data()))
        return response


def forget_pages() -> None:
    """Something changed through this portal: public pages are rendered afresh."""
    cache: TimedCache[Page] | None = current_app.extensions.get("portal.page_cache")
    if cache is not None:
        cache.clear()
