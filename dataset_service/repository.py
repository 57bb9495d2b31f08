"""The immutable, content-addressed repository of DICOM files, and the per-dataset trees that
workloads mount: a dataset's tree holds hard links to its own files and nothing else."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


@dataclass(frozen=True)
class TreeFile:
    """One file of a dataset tree: where it shows in the tree, and its content hash."""

    relative_path: str  # subject/study/series/NNNN.dcm
    sha256: str


# Blobs and dataset trees are read by the platform and the workloads it starts (the owner and
# the repository's group), never by other local accounts, and written by no one.
BLOB_MODE = 0o440
TREE_DIR_MODE = 0o550
SHARED_DIR_MODE = 0o750


def make_shared_dirs(path: Path) -> None:
    """`mkdir -p` whose every new folder gets SHARED_DIR_MODE, whatever the process's umask
    (the platform runs with a private one), so the repository's group can reach the blobs."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        # Keep the set-group-id bit a folder inherits (a repository shared with the
        # workloads' group), so what is stored below keeps that group too.
        os.chmod(folder, SHARED_DIR_MODE | (folder.stat().st_mode & stat.S_ISGID))


class Repository:
    """Files stored once by SHA-256, read-only; never served over any API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.trees = root / "datasets"
        self.staging = root / "staging"

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.blobs.joinpath(sha256[:2], sha256[2:4], sha256)

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def store(self, source: Path, sha256: str) -> bool:
        """Copy a file in under its hash (atomically); False if it was already there."""
        final = self.blob_path(sha256)
        if final.is_file():
            return False
        make_shared_dirs(final.parent)
        with self.locked():  # its copy in the staging area is not debris meanwhile
            return self._store(source, final)

    def _store(self, source: Path, final: Path) -> bool:
        fd, tmp = tempfile.mkstemp(dir=self.staging)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, BLOB_MODE)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return True

    def stage(self, source: Path, sha256: str, area: Path | None = None) -> str | None:
        """Copy a file into the staging area (or a folder of it, see `staging_area`),
        read-only, under a temporary name, for `store_many` to make it a blob later (or
        `unstage` to drop it); None if its blob is already in. Not yet flushed to disk:
        `store_many` flushes before it names a blob."""
        area = area or self.staging
        final = self.blob_path(sha256)
        if final.is_file():
            return None
        # The blob's folder now, while other files are being read, rather than when the
        # blob is named: an empty folder is no blob, and costs as much to make as a file.
        if not final.parent.is_dir():
            make_shared_dirs(final.parent)
        try:
            fd, tmp = tempfile.mkstemp(dir=area)
        except FileNotFoundError:
            area.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=area)
        try:
            with os.fdopen(fd, "wb") as out:
                _copy_into(out, source)
                os.fchmod(out.fileno(), BLOB_MODE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    def unstage(self, staged: Iterable[str]) -> None:
        """Remove staged copies that did not become blobs."""
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def staging_area(self, name: str) -> Path:
        """A folder of the staging area of one's own (say, one ingestion run's), so that
        whatever is left in it can be dropped at once with `drop_staging_area`."""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name) or name.strip(".") == "":
            raise ValueError(f"bad staging area name {name!r}")
        return self.staging / name

    def drop_staging_area(self, area: Path) -> None:
        """Remove a staging area folder and the copies left in it (none became a blob)."""
        shutil.rmtree(area, ignore_errors=True)

    # -- crash safety: locks, journals, recovery ------------------------------------------
    # A run (say, one ingestion) holds the lock of its name for as long as it lives, and the
    # kernel lets go of it when its process dies however it dies; whatever of a name whose
    # lock is free is left in the staging area (its folder, its journal) is therefore debris.
    # Writers hold the repository lock shared from naming blobs until their rows commit;
    # recovery holds it alone, so it never sees a blob between its rename and its row.

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool = False) -> Iterator[None]:
        """Hold the repository lock: shared by writers, exclusive for `recover`-like work."""
        fd = self._open_lock(".repository")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def hold(self, name: str) -> int:
        """Take the lock of a run by its name (see `staging_area`) and return its descriptor,
        held until `release`: while it is held, `abandoned` never names the run."""
        fd = self._open_lock(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"the run {name!r} is already running") from None
        return fd

    def release(self, name: str, fd: int) -> None:
        """Let go of a run's lock, dropping its lock file and its journal with it."""
        with contextlib.suppress(FileNotFoundError):
            self.journal_path(name).unlink()
        with contextlib.suppress(FileNotFoundError):
            self._lock_path(name).unlink()
        os.close(fd)

    def is_held(self, name: str) -> bool:
        """Whether a live process holds the run's lock."""
        if not self._lock_path(name).exists():
            return False
        fd = self._open_lock(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def abandoned(self) -> list[str]:
        """The names of runs that left something in the staging area and hold no lock."""
        if not self.staging.is_dir():
            return []
        names = set()
        for entry in self.staging.iterdir():
            name, suffix = os.path.splitext(entry.name)
            if suffix not in (".lock", ".journal"):
                if not entry.is_dir():
                    continue  # a loose staged copy: see drop_loose_staged
                name = entry.name
            if not name.startswith(".") and _AREA_NAME.fullmatch(name):
                names.add(name)
        return sorted(name for name in names if not self.is_held(name))

    def journal_path(self, name: str) -> Path:
        """Where a run notes the blobs it is about to name, before it names them."""
        self.staging_area(name)  # checks the name
        return self.staging / f"{name}.journal"

    def journaled(self, name: str) -> set[str]:
        """The blobs a run noted in its journal (a line cut short by a crash is skipped)."""
        try:
            lines = self.journal_path(name).read_text(encoding="ascii").splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            return set()
        return {line for line in lines if _SHA256_HEX.fullmatch(line)}

    def drop_abandoned(self, name: str) -> None:
        """Remove what an abandoned run left: its staging folder, journal and lock file."""
        self.drop_staging_area(self.staging_area(name))
        for path in (self.journal_path(name), self._lock_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def drop_loose_staged(self) -> int:
        """Remove staged copies left directly in the staging area by a writer that died;
        call with the repository lock held exclusively. Returns how many went."""
        if not self.staging.is_dir():
            return 0
        dropped = 0
        for entry in self.staging.iterdir():
            if entry.name.startswith("tmp") and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    dropped += 1
        return dropped

    def _lock_path(self, name: str) -> Path:
        if name != ".repository":
            self.staging_area(name)  # checks the name
        return self.staging / f"{name}.lock"

    def _open_lock(self, name: str) -> int:
        self.staging.mkdir(parents=True, exist_ok=True)
        return os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)

    def store_many(self, files: Iterable[tuple[Path, str]],
                   staged: dict[str, str] | None = None,
                   journal: Path | None = None) -> list[str]:
        """Copy files in under their hashes, as `store` does one, with one flush of the file
        system for all of them rather than one per file; the hashes it wrote (those already
        there are left alone). Each blob is whole on disk before its name appears.

        A file's copy already staged (`staged`: sha256 -> what `stage` returned) is used,
        and taken out of `staged`, instead of copying the file again. With a `journal`
        (see `journal_path`), the hashes about to be named are written to it, durably,
        before the first is, so that recovery finds a blob whose row never came."""
        staged = {} if staged is None else staged
        moving: list[tuple[str, str, Path]] = []
        written: list[str] = []
        try:
            for source, sha256 in files:
                final = self.blob_path(sha256)
                if final.is_file():
                    continue
                tmp = staged.pop(sha256, None)
                if tmp is None:
                    tmp = self.stage(source, sha256)
                    if tmp is None:  # it came in meanwhile
                        continue
                moving.append((sha256, tmp, final))
            if not moving:
                return written
            if journal is not None:
                with open(journal, "a", encoding="ascii") as notes:
                    notes.write("".join(f"{sha256}\n" for sha256, _, _ in moving))
            _sync_file_system(self.staging)
            while moving:
                sha256, tmp, final = moving[-1]
                if final.is_file():  # the same content twice in one call
                    os.unlink(tmp)
                else:
                    if not final.parent.is_dir():
                        make_shared_dirs(final.parent)
                    os.replace(tmp, final)
                    written.append(sha256)
                moving.pop()
        except BaseException:
            self.discard(written)
            raise
        finally:
            self.unstage(tmp for _, tmp, _ in moving)  # those not renamed into place
        return written

    def discard(self, sha256s: Iterable[str]) -> None:
        """Remove blobs this run wrote but could not record (no blob without its row)."""
        for sha256 in sha256s:
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(sha256).unlink()

    # -- dataset trees ---------------------------------------------------------------------
    def tree_path(self, dataset_id: str) -> Path:
        return self.trees / dataset_id

    def tree_name(self, dataset_id: str) -> str:
        """A dataset's tree relative to the repository root, as grants name it."""
        return self.tree_path(dataset_id).relative_to(self.root).as_posix()

    def build_tree(self, dataset_id: str, files: Iterable[TreeFile],
                   index: dict[str, Any]) -> Path:
        """Lay out a dataset's own directory of hard links plus its index, read-only.

        Built beside its final place and renamed in, so a tree is whole or absent."""
        final = self.tree_path(dataset_id)
        if final.is_dir():
            return final
        make_shared_dirs(self.trees)
        building = Path(tempfile.mkdtemp(dir=self.trees, prefix=f".{dataset_id}."))
        try:
            for item in files:
                target = building / item.relative_path
                if ".." in Path(item.relative_path).parts:
                    raise ValueError(f"bad path in dataset tree: {item.relative_path!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blob_path(item.sha256), target)
            (building / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
            os.chmod(building / "index.json", BLOB_MODE)
            for directory, _subdirs, _files in os.walk(building):
                os.chmod(directory, TREE_DIR_MODE)
            os.replace(building, final)
        except BaseException:
            _remove_tree(building)
            raise
        return final

    def remove_tree(self, dataset_id: str) -> None:
        _remove_tree(self.tree_path(dataset_id))


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_AREA_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _copy_into(out: BinaryIO, source: Path) -> None:
    """Copy a file into `out`, a new empty file: in the kernel with sendfile(2) where the
    system has it for files, else through a buffer."""
    with open(source, "rb") as src:
        sent = 0
        try:
            while chunk := os.sendfile(out.fileno(), src.fileno(), None, 1 << 24):
                sent += chunk
            return
        except (AttributeError, OSError):
            if sent:  # failed half way: not a missing feature
                raise
        src.seek(0)
        shutil.copyfileobj(src, out)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), which flushes one file system; None where there is none."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    return syncfs


def _sync_file_system(path: Path) -> None:
    """Make every file written on `path`'s file system durable: one flush for all of them
    (a flush per file costs far more on most disks), and sync(2) where syncfs is missing."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for directory, _subdirs, _files in os.walk(path):
        os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
