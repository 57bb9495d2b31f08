"""JSON from callers, refused before it is parsed when it nests deeper than any document of the
platform does: a hostile body must not exhaust the parser's stack and take the worker down."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from vre.errors import ApiError

MAX_DEPTH = 64  # the platform's own documents nest a handful of levels

# A JSON string literal, escapes included: brackets inside one do not nest anything.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def outside_strings(raw: bytes) -> bytes:
    """The JSON text with its string literals taken out: its structure and its numbers."""
    if b'\\"' not in raw:  # no quote escaped: every other quote closes a string
        return b"".join(raw.split(b'"')[::2])
    return _STRING.sub(b"", raw)


def nesting_depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, by a scan of its brackets outside
    strings (no parsing, no recursion)."""
    if b"[" not in raw and b"{" not in raw:
        return 0
    brackets = outside_strings(raw).translate(None, _NOT_BRACKET)
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets)), default=0))


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if the text nests deeper than `limit`; a text with fewer brackets is never read."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return nesting_depth(raw) > limit


def loads(raw: bytes) -> Any:
    """Parse a caller's JSON, or raise a 400 with a stable code (malformed or too deep)."""
    if too_deep(raw):
        raise ApiError(f"request body nests deeper than {MAX_DEPTH} levels", code="json_too_deep")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"request body is not valid JSON: {exc}", code="malformed_json") from exc
