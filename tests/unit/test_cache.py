"""The in-process cache shared by the portal's page cache and the catalogue's searches."""

from __future__ import annotations

import threading

import pytest

from vre.cache import TimedCache


def test_values_expire_after_their_time() -> None:
    now = [100.0]
    kept: TimedCache[str] = TimedCache(seconds=5, max_entries=10, clock=lambda: now[0])
    kept.put("a", "first")
    now[0] += 4.9
    assert kept.get("a") == "first"
    now[0] += 0.2
    assert kept.get("a") is None and len(kept) == 0, "an expired entry is dropped"
    kept.put("a", "again")
    assert kept.get("a") == "again"


def test_the_least_recently_used_goes_first_when_full() -> None:
    kept: TimedCache[int] = TimedCache(seconds=60, max_entries=2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # "b" is now the least recently used
    kept.put("c", 3)
    assert (kept.get("a"), kept.get("b"), kept.get("c")) == (1, None, 3)
    kept.clear()
    assert len(kept) == 0 and kept.get("a") is None


def test_keys_are_any_hashable_value() -> None:
    kept: TimedCache[str] = TimedCache(seconds=60, max_entries=4)
    kept.put((3, "query", None), "page")
    assert kept.get((3, "query", None)) == "page"
    assert kept.get((4, "query", None)) is None


@pytest.mark.parametrize(("seconds", "entries"), [(0, 10), (-1, 10), (10, 0)])
def test_a_cache_needs_a_lifetime_and_a_size(seconds: float, entries: int) -> None:
    with pytest.raises(ValueError):
        TimedCache(seconds, entries)


def test_threads_share_it_without_losing_the_bound() -> None:
    kept: TimedCache[int] = TimedCache(seconds=60, max_entries=50)

    def work(base: int) -> None:
        for i in range(2_000):
            kept.put((base, i % 80), i)
            kept.get((base, (i * 7) % 80))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kept) == 50
