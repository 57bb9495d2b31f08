"""Parts of pages drawn from the dataset service's public answers, kept with the answer's
ETag. Every request still asks the service, conditionally: while it answers 304 the kept
part is shown. A page is so never older than the catalogue, in any portal process, and only
a changed answer is drawn again (drawing, not asking, is most of a page's cost)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from flask import Flask, current_app
from markupsafe import Markup

from vre.cache import TimedCache
from vre.client import Answer

# Kept parts unused this long go; a used one is checked with the service on every request.
KEEP_SECONDS = 3_600
MAX_ENTRIES = 2_000


def install(app: Flask) -> None:
    app.extensions["portal.fragments"] = TimedCache[tuple[str, Markup]](KEEP_SECONDS,
                                                                        MAX_ENTRIES)


def drawn(key: Hashable, ask: Callable[[str | None], Answer],
          draw: Callable[[Any], str]) -> Markup:
    """The part `draw` makes of the answer that `ask(etag held or None)` gives, or the part
    kept under `key` while the service says its answer has not changed."""
    cache: TimedCache[tuple[str, Markup]] = current_app.extensions["portal.fragments"]
    kept = cache.get(key)
    answer = ask(kept[0] if kept else None)
    if answer.status == 304 and kept is not None:
        return kept[1]
    part = Markup(draw(answer.json()))  # drawn by an autoescaping template
    etag = answer.headers.get("ETag")
    if etag:
        cache.put(key, (etag, part))
    return part
