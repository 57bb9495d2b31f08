"""What `vre serve` leaves behind before Granian forks its workers: after checking that the
app can be built, no thread of the app may still run and no connection stay open. A fork
copies a lock another thread holds (SQLite's, taken while the outbox's sender reads its
table) into the worker, which then waits on it for ever and never answers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from flask import Flask

from launcher.serve import checked_before_fork
from vre.config import Config

SERVICES = ("tracer", "dataset_service", "portal")


@pytest.mark.parametrize("name", SERVICES)
def test_checking_an_app_leaves_no_thread_and_no_connection(
        name: str, config: Config, make_app: Callable[[str], Flask]) -> None:
    make_app(name)  # migrated, so the outbox's sender has a table to read
    before = set(threading.enumerate())
    app = checked_before_fork(name, config)
    assert set(threading.enumerate()) - before == set()
    assert app.extensions["vre.db"].engine.pool.checkedout() == 0
