"""A short-lived cache of the public pages the portal renders for anonymous visitors (the
catalogue and landing pages): the same for everyone, asked for again and again, and each one
costs a search or a record at the dataset service. Signed-in pages are never cached; a change
made through this portal empties the cache, other changes show within the configured time."""

from __future__ import annotations

from flask import Flask, Response, current_app, request
from flask_login import current_user

from vre.cache import TimedCache

CACHED_ENDPOINTS = frozenset({"catalogue.catalogue", "catalogue.landing", "catalogue.export"})
MAX_ENTRIES = 2_000
# What a page kept: status, headers and body.
Page = tuple[int, list[tuple[str, str]], bytes]


def _cacheable() -> bool:
    return (request.method == "GET" and request.endpoint in CACHED_ENDPOINTS
            and not current_user.is_authenticated)


def install(app: Flask, seconds: int) -> None:
    """Serve anonymous public pages from the cache, and keep what they rendered."""
    if seconds <= 0:
        return
    cache: TimedCache[Page] = TimedCache(seconds, MAX_ENTRIES)
    app.extensions["portal.page_cache"] = cache

    @app.before_request
    def _from_cache() -> Response | None:
        if not _cacheable():
            return None
        page = cache.get(request.full_path)
        if page is None:
            return None
        status, headers, body = page
        response = Response(body, status=status, headers=headers)
        response.headers["X-Page-Cache"] = "hit"
        return response

    @app.after_request
    def _keep(response: Response) -> Response:
        # A response that sets a cookie is someone's; only plain public answers are kept.
        if response.status_code == 200 and _cacheable() and "X-Page-Cache" not in \
                response.headers and "Set-Cookie" not in response.headers \
                and not response.direct_passthrough:
            cache.put(request.full_path, (response.status_code,
                                          list(response.headers.items()), response.get_data()))
        return response


def forget_pages() -> None:
    """Something changed through this portal: public pages are rendered afresh."""
    cache: TimedCache[Page] | None = current_app.extensions.get("portal.page_cache")
    if cache is not None:
        cache.clear()
