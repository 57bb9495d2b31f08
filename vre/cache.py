"""A small in-process cache: entries expire after a fixed time, the least recently used
go first when it is full, and threads may share it. The portal keeps public pages in one,
the dataset service catalogue searches; neither needs more than this, nor a cache server."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TimedCache(Generic[V]):
    """key -> value for `seconds`, at most `max_entries` of them."""

    def __init__(self, seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if seconds <= 0 or max_entries <= 0:
            raise ValueError("a cache needs a positive lifetime and size")
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value kept under `key`, or None when there is none or it has expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + self.seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
