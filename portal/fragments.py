"""Parts of pages drawn from the dataset service's public answers, kept with the answer's
ETag. Every request still asks the service, conditionally: while it answers 304 the kept
part is shown. A page is so never older than the catalogue, in any portal process, and only
a changed answer is drawn again (drawing, not asking, is most of a page's cost)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from flask import Flask, current_app

from vre.cache import TimedCache
from vre.client import Answer

# Kept parts unused this long go; a used one is checked with the service on every request.
KEEP_SECONDS = 3_600
# A catalogue's worth of landing pages and the searches asked most (each part a few KB).
MAX_ENTRIES = 10_000
T = TypeVar("T")


def install(app: Flask) -> None:
    app.extensions["portal.fragments"] = TimedCache[tuple[str, Any]](KEEP_SECONDS,
                                                                     MAX_ENTRIES)


def drawn(key: Hashable, ask: Callable[[str | None], Answer], draw: Callable[[Any], T]) -> T:
    """What `draw` makes of the answer that `ask(etag held or None)` gives, or what was
    kept under `key` while the service says its answer has not changed. Only answers with
    an ETag are kept: the service names only what reads the same for everyone."""
    cache: TimedCache[tuple[str, Any]] = current_app.extensions["portal.fragments"]
    kept = cache.get(key)
    answer = ask(kept[0] if kept else None)
    if answer.status == 304 and kept is not None:
        return kept[1]
    part = draw(answer.json())
    etag = answer.headers.get("ETag")
    if etag:
        cache.put(key, (etag, part))
    return part
