"""A job's outputs as the ledger names them: the manifest of its output folder (each regular
file's path, size and SHA-256) and one hash over that manifest, which JOB_FINISHED carries.
Anyone holding the files can recompute the hash and check they are what the job wrote.

The folder is written by code in a sandbox, so it is read as hostile: links are never
followed (a link is listed as one, with its target's text, never opened), FIFOs, sockets and
devices are listed and never opened, and a file that changes into something else between
listing and opening is refused by O_NOFOLLOW and a type check on the open descriptor."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

CHUNK = 1 << 20
MAX_FILES = 100_000


@dataclass(frozen=True)
class Entry:
    """One thing in the folder: a regular file with its size and hash, or something else
    (`kind` link, fifo, socket, device) that is named and never read."""

    path: str
    kind: str
    size: int = 0
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """Every entry, sorted by path, and the hash over their canonical JSON."""

    entries: tuple[Entry, ...]
    truncated: bool = False

    @property
    def hash(self) -> str:
        return manifest_hash(self.entries)

    def as_json(self) -> dict:
        return {"files": [asdict(e) for e in self.entries], "manifest_hash": self.hash,
                "truncated": self.truncated}


def manifest_hash(entries: tuple[Entry, ...] | list[Entry]) -> str:
    """sha256 over the canonical JSON list of [path, kind, size, sha256] in path order."""
    rows = [[e.path, e.kind, e.size, e.sha256] for e in sorted(entries, key=lambda e: e.path)]
    body = json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def file_sha256(fd: int) -> str:
    """The SHA-256 of what an open descriptor reads to its end."""
    digest = hashlib.sha256()
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "other"


def _hash_at(dir_fd: int, name: str) -> tuple[int, str] | None:
    """Size and hash of a regular file opened without following links; None when it is not
    one any more (swapped meanwhile)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        return info.st_size, file_sha256(fd)
    finally:
        os.close(fd)


def manifest(folder: Path, limit: int = MAX_FILES) -> Manifest:
    """The manifest of everything under `folder` (empty when it does not exist)."""
    try:
        root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return Manifest(())
    entries: list[Entry] = []
    truncated = False
    stack: list[tuple[int, str]] = [(root, "")]
    try:
        while stack:
            dir_fd, prefix = stack.pop()
            try:
                with os.scandir(dir_fd) as found:
                    names = sorted(e.name for e in found)
                for name in names:
                    if len(entries) >= limit:
                        truncated = True
                        break
                    path = prefix + name
                    try:
                        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        try:
                            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                            | os.O_CLOEXEC, dir_fd=dir_fd)
                        except OSError:
                            continue
                        stack.append((child, path + "/"))
                    elif stat.S_ISREG(info.st_mode):
                        hashed = _hash_at(dir_fd, name)
                        if hashed is not None:
                            entries.append(Entry(path, "file", hashed[0], hashed[1]))
                    elif stat.S_ISLNK(info.st_mode):
                        target = os.readlink(name, dir_fd=dir_fd)[:4096]
                        entries.append(Entry(path, "link", len(target),
                                             hashlib.sha256(target.encode(errors="replace"))
                                             .hexdigest()))
                    else:
                        entries.append(Entry(path, _kind(info.st_mode)))
            finally:
                os.close(dir_fd)
    finally:
        for dir_fd, _ in stack:
            os.close(dir_fd)
    return Manifest(tuple(sorted(entries, key=lambda e: e.path)), truncated)


class Unpinnable(ValueError):
    """A path that cannot be pinned, with a stable code and a reason a person can act on."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def checked_relative(path: str) -> list[str]:
    """The components of a path inside a folder, refused when it could point elsewhere."""
    parts = path.split("/")
    if (not path or len(path) > 1024 or "\x00" in path or path.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise Unpinnable("bad_path", f"{path!r} is not a path inside ~/persistent")
    return parts


def pin_file(root: Path, path: str, dest: Path, max_bytes: int) -> tuple[int, str]:
    """Copy `root/path` to `dest` (written whole, then renamed) without following a link at
    any step: the bytes reviewed are exactly the bytes that may leave. Its size and SHA-256."""
    parts = checked_relative(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        folder = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        raise Unpinnable("not_found", "there is no persistent folder yet") from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=folder)
            except OSError:
                raise Unpinnable("not_found", f"{path!r}: {part!r} is not a folder") from None
            os.close(folder)
            folder = inner
        try:
            fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=folder)
        except OSError:
            raise Unpinnable("not_found", f"{path!r} is not a file in ~/persistent") from None
    finally:
        os.close(folder)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unpinnable("not_a_file", f"{path!r} is not a regular file")
        if info.st_size > max_bytes:
            raise Unpinnable("too_large", f"{path!r} has {info.st_size} bytes; a file may "
                             f"have at most {max_bytes}")
        digest, size = hashlib.sha256(), 0
        partial = dest.with_name(dest.name + ".partial")
        with open(partial, "wb") as out:
            while chunk := os.read(fd, CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise Unpinnable("too_large", f"{path!r} grew beyond {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        partial.chmod(0o400)
        partial.replace(dest)
        return size, digest.hexdigest()
    except BaseException:
        dest.with_name(dest.name + ".partial").unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
