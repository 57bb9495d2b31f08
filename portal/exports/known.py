"""What the automatic export checks compare files against, read from the granted datasets'
trees in the repository: every file's SHA-256, each series' pixel array shapes and byte sizes,
and the identifiers a result must not carry (UIDs, pseudonyms, study ids). A dataset version
never changes, so what is read is kept per content hash and read once."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from portal.exports.checks import Known
from vre.files import write_whole

# The byte sizes a series' pixels take as the arrays researchers make of them.
ITEM_SIZES = (1, 2, 4, 8)
_IDENTIFYING = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID",
                "StudyID", "AccessionNumber")


def dataset_facts(tree: Path) -> dict[str, list]:
    """One dataset tree's file hashes, series shapes and sizes, and identifiers."""
    import pydicom

    hashes: list[str] = []
    identifiers: set[str] = set()
    slices: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for path in sorted(_files(tree)):
        data = path.read_bytes()
        hashes.append(hashlib.sha256(data).hexdigest())
        if not path.name.lower().endswith(".dcm") and data[128:132] != b"DICM":
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue
        for keyword in _IDENTIFYING:
            value = str(getattr(header, keyword, "") or "").strip()
            if len(value) >= 4:
                identifiers.add(value)
        rows, cols = int(getattr(header, "Rows", 0) or 0), int(getattr(header, "Columns", 0) or 0)
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        if rows and cols:
            series = str(getattr(header, "SeriesInstanceUID", "") or path.parent)
            slices[series].append((frames, rows, cols))
    shapes: set[tuple[int, ...]] = set()
    sizes: set[int] = set()
    for planes in slices.values():
        count = sum(frames for frames, _, _ in planes)
        for _, rows, cols in set(planes):
            shapes |= {(rows, cols), (count, rows, cols)}
            sizes |= {n * rows * cols * item for n in (1, count) for item in ITEM_SIZES}
    return {"hashes": hashes, "shapes": sorted(map(list, shapes)), "sizes": sorted(sizes),
            "identifiers": sorted(identifiers)}


def _files(tree: Path) -> Iterable[Path]:
    for folder, _dirs, names in os.walk(tree):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                yield path


def known_for(trees: Iterable[tuple[str, Path]], cache: Path, threshold: int = 10) -> Known:
    """The checks' context for the datasets given as (content hash, tree), each read once
    and kept under `cache` by its content hash."""
    hashes: set[str] = set()
    shapes: set[tuple[int, ...]] = set()
    sizes: set[int] = set()
    identifiers: set[str] = set()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    for content_hash, tree in trees:
        kept = cache / (content_hash.removeprefix("sha256:") + ".json")
        try:
            facts = json.loads(kept.read_text())
        except (FileNotFoundError, ValueError):
            facts = dataset_facts(tree)
            write_whole(kept, json.dumps(facts), mode=0o600)
        hashes |= set(facts["hashes"])
        shapes |= {tuple(s) for s in facts["shapes"]}
        sizes |= set(facts["sizes"])
        identifiers |= set(facts["identifiers"])
    return Known(repository_hashes=frozenset(hashes), series_shapes=frozenset(shapes),
                 series_sizes=frozenset(sizes), identifiers=frozenset(identifiers),
                 threshold=threshold)
