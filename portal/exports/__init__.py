"""The export airlock: what may leave the platform, and the checks every file goes through."""

from __future__ import annotations

from pathlib import Path

from vre.config import Config


def store_of(config: Config) -> Path:
    """Where the files of export requests are kept, pinned, out of every workload's reach."""
    return config.home / "exports"
