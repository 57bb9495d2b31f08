"""Importing libraries that change process-wide interpreter settings when imported, with those
settings kept as they were."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def keeping_recursion_limit() -> Iterator[None]:
    """Restore the recursion limit after the block: py_ecc (under eth_account and web3) raises it
    to 100,000 when imported, and then a deeply nested document overflows the C stack and kills
    the process instead of raising RecursionError."""
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
