"""Project drop folders: each project ingests from `<import root>/<project name>` and from
nowhere else. Paths a steward gives are resolved against their project's folder, links
included, so that no path reaches another project's folder, the repository or the rest of
the host; reports show paths relative to the drop folder, never where it lies."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path, PurePosixPath

from vre.config import ConfigError

log = logging.getLogger(__name__)

# The setting that moves every drop folder; errors caused by the import root name it.
IMPORT_ROOT_SETTING = "VRE_IMPORT_ROOT"
# Linux limits: a name of 255 bytes, a path of 4,095 bytes (PATH_MAX counts the NUL).
NAME_MAX = 255
PATH_MAX = 4095
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DropFolderError(Exception):
    """A path cannot be ingested from; `code` is the API's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_import_root(import_root: Path, data_dir: Path, repository: Path) -> Path:
    """The import root, created when it can be. Refused when it would expose the data
    directory or the repository (a project named after one of their folders would ingest
    from it); one that cannot be made is left for ingestion to report, naming the setting,
    since a service without ingestion still serves its catalogue."""
    root = Path(os.path.realpath(import_root))
    home, repo = Path(os.path.realpath(data_dir)), Path(os.path.realpath(repository))
    if _within(home, root):
        raise ConfigError(
            IMPORT_ROOT_SETTING,
            f"{import_root} holds the data directory; "
            f"choose a folder of its own (default: {data_dir / 'import'})",
        )
    if _within(root, repo):
        raise ConfigError(IMPORT_ROOT_SETTING, f"{import_root} lies inside the repository")
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        log.warning(
            "the import root cannot be made; set %s to a folder that exists",
            IMPORT_ROOT_SETTING,
            extra={"event": "import_root_missing", "error": exc.strerror},
        )
    if root.exists() and not root.is_dir():
        raise ConfigError(IMPORT_ROOT_SETTING, f"{import_root} is not a folder")
    return root


def locate(import_root: Path, project: str, create: bool = False) -> Path:
    """The drop folder of a project (by name), made when `create` is set."""
    if not is_project_name(project):
        raise ValueError(f"not a project name: {project!r}")
    folder = import_root / project
    if create:
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    return folder


def is_project_name(name: str) -> bool:
    """Whether `name` has the shape of a project name (which names its drop folder)."""
    return re.fullmatch(r"[a-z0-9][a-z0-9-]{1,62}", name) is not None


def place(path: str, folder: Path) -> Path:
    """The folder `path` names inside the drop folder `folder`: relative paths start there,
    and links are resolved before the check. Missing, outside and unreadable all raise the
    same `source_not_found`, so that nobody learns what exists elsewhere on the host."""
    _check_shape(path)
    not_found = DropFolderError(
        "source_not_found",
        f"no folder {path!r} in the project's drop folder (paths are "
        f"relative to it; the drop folders lie under {IMPORT_ROOT_SETTING})",
    )
    base = Path(os.path.realpath(folder))
    try:
        target = Path(os.path.realpath(base / path))
        if not _within(target, base) or not target.is_dir():
            raise not_found
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long() from None
        raise not_found from None
    return target


def shown(path: str | Path, folder: Path) -> str:
    """`path` as the steward knows it: relative to the drop folder ('.' for the folder
    itself), a link by its own name rather than what it points to; a path outside the
    folder is shown by its last name only, never by where it lies."""
    given = Path(path)
    base = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(given.parent)) / given.name if given.name else given
    if target == base or base in target.parents:
        return str(PurePosixPath(*target.relative_to(base).parts)) if target != base else "."
    return given.name


def _check_shape(path: str) -> None:
    if _CONTROL.search(path):
        raise DropFolderError("invalid_path", "the path holds control characters")
    try:
        encoded = os.fsencode(path)
    except UnicodeError:
        raise DropFolderError("invalid_path", "the path is not valid text") from None
    if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise _too_long()


def _too_long() -> DropFolderError:
    return DropFolderError(
        "path_too_long",
        f"the path is longer than the file system allows "
        f"({NAME_MAX} bytes a name, {PATH_MAX} in all)",
    )


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
