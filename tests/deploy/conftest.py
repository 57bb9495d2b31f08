"""Fixtures of the deployment tests: a scratch home for helm, and helm itself checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.charts import helm_binary


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Helm's cache and config for this run; fails with the install hint if helm is missing."""
    helm_binary()
    return tmp_path_factory.mktemp("helm")
