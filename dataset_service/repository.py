"""The immutable, content-addressed repository of DICOM files, and the per-dataset trees that
workloads mount: a dataset's tree holds hard links to its own files and nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TreeFile:
    """One file of a dataset tree: where it shows in the tree, and its content hash."""

    relative_path: str  # subject/study/series/NNNN.dcm
    sha256: str


class Repository:
    """Files stored once by SHA-256, read-only; never served over any API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.trees = root / "datasets"
        self.staging = root / "staging"

    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def store(self, source: Path, sha256: str) -> bool:
        """Copy a file in under its hash (atomically); False if it was already there."""
        final = self.blob_path(sha256)
        if final.is_file():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.staging)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return True

    def discard(self, sha256s: Iterable[str]) -> None:
        """Remove blobs this run wrote but could not record (no blob without its row)."""
        for sha256 in sha256s:
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(sha256).unlink()

    # -- dataset trees ---------------------------------------------------------------------
    def tree_path(self, dataset_id: str) -> Path:
        return self.trees / dataset_id

    def build_tree(self, dataset_id: str, files: Iterable[TreeFile],
                   index: dict[str, Any]) -> Path:
        """Lay out a dataset's own directory of hard links plus its index, read-only.

        Built beside its final place and renamed in, so a tree is whole or absent."""
        final = self.tree_path(dataset_id)
        if final.is_dir():
            return final
        self.trees.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=self.trees, prefix=f".{dataset_id}."))
        try:
            for item in files:
                target = building / item.relative_path
                if ".." in Path(item.relative_path).parts:
                    raise ValueError(f"bad path in dataset tree: {item.relative_path!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blob_path(item.sha256), target)
            (building / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
            os.chmod(building / "index.json", 0o444)
            for directory, _subdirs, _files in os.walk(building):
                os.chmod(directory, 0o555)
            os.replace(building, final)
        except BaseException:
            _remove_tree(building)
            raise
        return final

    def remove_tree(self, dataset_id: str) -> None:
        _remove_tree(self.tree_path(dataset_id))


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for directory, _subdirs, _files in os.walk(path):
        os.chmod(directory, 0o755)
    shutil.rmtree(path, ignore_errors=True)
