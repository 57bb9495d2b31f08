"""Files that other threads and processes read while they are being written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_whole(path: Path, text: str, *, mode: int = 0o644,
                owner: tuple[int, int] | None = None) -> None:
    """Write a text file that no reader ever sees half-written: it is written under a name of
    its own beside `path` and renamed over it, so two writers at once leave one of their
    texts whole. `mode` and `owner` (uid, gid) are set before it appears."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(partial, mode)
        if owner is not None:
            os.chown(partial, *owner)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
