"""`vre-export`: how researchers ask for results to leave the platform through the airlock,
from inside their desktop: request an export of files in ~/persistent, follow its checks and
review, and download the approved files, each verified against the hash it was reviewed with.
Only ~/persistent can be exported."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from batch_tools import _common
from batch_tools._common import CommandError, as_json, fields, table

# The client, the configuration (pydantic) and HTTP are imported once the arguments are
# parsed: `vre-export --help` and a mistyped command answer at once, without loading them.
if TYPE_CHECKING:
    from portal.client import PortalClient

PROG = "vre-export"
EXIT_CODES = _common.EXIT_CODES + """\
  1    also: a downloaded file whose SHA-256 is not the one reviewed (hash_mismatch);
       the file is removed
"""
SHORT_HASH = 12  # hex digits of a SHA-256 shown in lists


def persistent_folder() -> Path:
    """The one folder exports are taken from: ~/persistent."""
    return Path(os.path.expanduser("~")) / "persistent"


def export_path(name: str, persistent: Path) -> str:
    """A FILE as the portal names it: its path relative to ~/persistent. An absolute path
    must lie under ~/persistent and a relative one is taken relative to it; one that leads
    out (by `..` or a link) is refused, on this side, since nothing else can be exported."""
    base = Path(os.path.normpath(persistent))
    path = Path(os.path.normpath(base / name))  # an absolute `name` replaces `base`
    real_base = Path(os.path.realpath(base))
    if not path.is_relative_to(base) or path == base or \
            not Path(os.path.realpath(path)).is_relative_to(real_base):
        raise CommandError("not_in_persistent",
                           f"{name} is not a file in {persistent}; only files there can be "
                           "exported", 2)
    return path.relative_to(base).as_posix()


def safe_name(path: str, fallback: str) -> str:
    """The name a downloaded file is saved under: the last part of its path only, so that no
    path the portal sends (`..`, absolute) can place it outside the folder asked for."""
    for candidate in (PurePosixPath(path.replace("\\", "/")).name, fallback, "file"):
        name = candidate.replace("/", "_").replace("\\", "_")
        if name not in ("", ".", "..") and "\x00" not in name:
            return name
    return "file"  # not reached: "file" is always a good name


def create_new(folder: Path, name: str) -> tuple[Path, BinaryIO]:
    """A file of that name in `folder` created for writing, never one already there: on a
    collision `-1`, `-2`, ... goes before its suffix."""
    stem, suffix = (name, "") if name.startswith(".") else (Path(name).stem, Path(name).suffix)
    attempt = 0
    while True:
        target = folder / (name if attempt == 0 else f"{stem}-{attempt}{suffix}")
        try:
            return target, open(target, "xb")  # the caller writes and closes it
        except FileExistsError:
            attempt += 1


def _hex(sha256: str | None) -> str:
    return (sha256 or "").removeprefix("sha256:").lower()


def _short(sha256: str | None) -> str:
    return _hex(sha256)[:SHORT_HASH] or "-"


def _codes(file: dict[str, Any]) -> str:
    return ",".join(f["code"] for f in file.get("findings") or []) or "-"


def _file_rows(export: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(f["path"], f.get("size"), _short(f.get("sha256")), f.get("verdict") or "-",
             _codes(f)) for f in export.get("files") or []]


def _export_lines(export: dict[str, Any]) -> list[tuple[str, Any]]:
    return [("export", export["id"]), ("title", export.get("title")),
            ("state", export.get("state")), ("purpose", export.get("purpose")),
            ("project", export.get("project")), ("owner", export.get("owner_id")),
            ("reviewers needed", export.get("reviewers_needed")),
            ("created", export.get("created_at")), ("submitted", export.get("submitted_at")),
            ("decided", export.get("decided_at")),
            *[("dataset", f"{d['id']} {d.get('hash') or ''}".rstrip())
              for d in export.get("datasets") or []]]


def _file_lines(file: dict[str, Any]) -> list[tuple[str, Any]]:
    lines: list[tuple[str, Any]] = [
        ("file", f"{file['id']} {file['path']}"), ("size", file.get("size")),
        ("sha256", _hex(file.get("sha256"))), ("verdict", file.get("verdict"))]
    for finding in file.get("findings") or []:
        where = f" ({finding['where']})" if finding.get("where") else ""
        lines.append(("finding", f"{finding['code']}: {finding.get('reason') or ''}{where}"))
    lines.append(("decision", file.get("decision")))
    for vote in file.get("votes") or []:
        comment = f": {vote['comment']}" if vote.get("comment") else ""
        lines.append(("vote", f"{vote.get('reviewer_id')} {vote['vote']}{comment}"
                              f" ({vote.get('at') or '-'})"))
    return lines


def cmd_request(client: PortalClient, args: argparse.Namespace) -> int:
    export = client.create_export(args.title, args.purpose, args.files, submit=not args.draft)
    if args.json:
        print(as_json(export))
        return 0
    print(export["id"])
    print(table(_file_rows(export), ("PATH", "SIZE", "SHA256", "VERDICT", "FINDINGS")))
    return 0


def cmd_list(client: PortalClient, args: argparse.Namespace) -> int:
    exports = client.exports()
    if args.json:
        print(as_json(exports))
        return 0
    rows = [(e["id"], e.get("title"), e.get("state"), len(e.get("files") or []),
             e.get("submitted_at") or "-") for e in exports]
    print(table(rows, ("ID", "TITLE", "STATE", "FILES", "SUBMITTED")))
    return 0


def cmd_show(client: PortalClient, args: argparse.Namespace) -> int:
    export = client.export(args.export)
    if args.json:
        print(as_json(export))
        return 0
    print("\n\n".join([fields(_export_lines(export)),
                       *(fields(_file_lines(f)) for f in export.get("files") or [])]))
    return 0


def _transition(what: str) -> Callable[[PortalClient, argparse.Namespace], int]:
    def command(client: PortalClient, args: argparse.Namespace) -> int:
        export = getattr(client, f"{what}_export")(args.export)
        print(as_json(export) if args.json else f"{export['id']} {export['state']}")
        return 0
    return command


def _save(client: PortalClient, url: str, target: Path, out: BinaryIO) -> str:
    """Write the bytes behind `url` to `out`, the file at `target`: their SHA-256, computed as
    they are written. The file is removed if the download fails."""
    digest = hashlib.sha256()
    try:
        with out:
            for chunk in client.download(url):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def cmd_download(client: PortalClient, args: argparse.Namespace) -> int:
    export = client.export(args.export)
    files = [f for f in export.get("files") or []
             if args.file is None or f["id"] == args.file]
    if args.file is not None and not files:
        raise CommandError("not_found", f"export {export['id']} has no file {args.file}", 1)
    approved = [f for f in files if f.get("decision") == "approved"]
    if not approved:
        raise CommandError("not_approved", f"file {args.file} of export {export['id']} is not "
                           "approved" if args.file else f"export {export['id']} has no "
                           "approved file", 1)
    folder = Path(args.to)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for file in approved:
        link = client.export_link(export["id"], file["id"])
        target, out = create_new(folder, safe_name(file["path"], file["id"]))
        sha256 = _save(client, link["url"], target, out)
        if sha256 != _hex(link.get("sha256")):
            target.unlink()
            raise CommandError("hash_mismatch",
                               f"{file['path']} arrived with SHA-256 {sha256}, not the "
                               f"{_hex(link.get('sha256'))} it was reviewed with; removed", 1)
        saved.append({"file_id": file["id"], "path": str(target), "sha256": sha256})
        if not args.json:
            print(f"{target}  {sha256}", flush=True)
    if args.json:
        print(as_json(saved))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[PortalClient, argparse.Namespace], int],
                what: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=what, description=what, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON, for scripts")
        return p

    request = command("request", cmd_request,
                      "ask for files of ~/persistent to be exported; they are checked at once")
    request.add_argument("--title", required=True, help="what the export is, in a few words")
    request.add_argument("--purpose", required=True,
                         help="why these results must leave the platform, for the reviewers")
    request.add_argument("--draft", action="store_true",
                         help="keep it a draft: checked, but not sent for review")
    request.add_argument("files", nargs="+", metavar="FILE",
                         help="a file in ~/persistent (absolute, or relative to ~/persistent)")
    command("list", cmd_list, "your export requests")
    for name, func, what in (
            ("show", cmd_show, "one export in full: its files, checks, decisions and votes"),
            ("submit", _transition("submit"), "send a draft export for review"),
            ("withdraw", _transition("withdraw"), "withdraw an export not yet decided")):
        command(name, func, what).add_argument("export", metavar="ID")
    download = command("download", cmd_download,
                       "download the approved files, each checked against its reviewed hash")
    download.add_argument("export", metavar="ID")
    download.add_argument("--to", default=".", metavar="DIR",
                          help="the folder to save them in (default: the current one)")
    download.add_argument("--file", metavar="FILE_ID", help="only this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "request":  # refused here, before anything is asked of the portal
        try:
            persistent = persistent_folder()
            args.files = [export_path(name, persistent) for name in args.files]
        except CommandError as exc:
            return _common.report(PROG, exc)
    return _common.run(PROG, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
