"""A short-lived cache of the public pages the portal renders for anonymous visitors (the
catalogue and landing pages): the same for everyone, asked for again and again, and each one
costs a search or a record at the dataset service. Signed-in pages are never cached; a change
made through this portal empties the cache, other changes show within the configured time."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from flask import Flask, Response, current_app, request
from flask_login import current_user

CACHED_ENDPOINTS = frozenset({"catalogue.catalogue", "catalogue.landing", "catalogue.export"})
MAX_ENTRIES = 2_000


class PageCache:
    """URL -> (expiry, status, headers, body), least recently used dropped first."""

    def __init__(self, seconds: int, max_entries: int = MAX_ENTRIES) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._pages: OrderedDict[str, tuple[float, int, list[tuple[str, str]], bytes]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Response | None:
        with self._lock:
            entry = self._pages.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._pages[key]
                return None
            self._pages.move_to_end(key)
        _, status, headers, body = entry
        return Response(body, status=status, headers=headers)

    def put(self, key: str, response: Response) -> None:
        entry = (time.monotonic() + self.seconds, response.status_code,
                 list(response.headers.items()), response.get_data())
        with self._lock:
            self._pages[key] = entry
            self._pages.move_to_end(key)
            while len(self._pages) > self.max_entries:
                self._pages.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._pages.clear()


def _cacheable() -> bool:
    return (request.method == "GET" and request.endpoint in CACHED_ENDPOINTS
            and not current_user.is_authenticated)


def install(app: Flask, seconds: int) -> None:
    """Serve anonymous public pages from the cache, and keep what they rendered."""
    if seconds <= 0:
        return
    cache = PageCache(seconds)
    app.extensions["portal.page_cache"] = cache

    @app.before_request
    def _from_cache() -> Response | None:
        if not _cacheable():
            return None
        cached = cache.get(request.full_path)
        if cached is not None:
            cached.headers["X-Page-Cache"] = "hit"
        return cached

    @app.after_request
    def _keep(response: Response) -> Response:
        # A response that sets a cookie is someone's; only plain public answers are kept.
        if response.status_code == 200 and _cacheable() and "X-Page-Cache" not in \
                response.headers and "Set-Cookie" not in response.headers \
                and not response.direct_passthrough:
            cache.put(request.full_path, response)
        return response


def forget_pages() -> None:
    """Something changed through this portal: public pages are rendered afresh."""
    cache: PageCache | None = current_app.extensions.get("portal.page_cache")
    if cache is not None:
        cache.clear()
