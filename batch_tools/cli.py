"""`vre-job`: the batch-job command researchers use inside their desktop. It reads the same
flavor and application catalogues as the portal's pages."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# The client, the configuration (pydantic) and HTTP are imported once the arguments are
# parsed: `vre-job --help` and a mistyped command answer at once, without loading them.
if TYPE_CHECKING:
    from portal.client import PortalClient
    from vre.service_auth import TokenSource


def _tokens(args: argparse.Namespace) -> TokenSource | None:
    """One given (--token, VRE_TOKEN), the workload's own that the platform keeps current
    (VRE_TOKEN_FILE, inside a desktop or job), or a user's (password on stdin)."""
    from vre.config import load_config
    from vre.service_auth import FileToken, StaticToken, command_line_tokens

    token = args.token or os.environ.get("VRE_TOKEN")
    if token:
        return StaticToken(token)
    if os.environ.get("VRE_TOKEN_FILE") and not args.user:
        return FileToken(os.environ["VRE_TOKEN_FILE"])
    return command_line_tokens(load_config(), None, args.user, client="vre-job") \
        if args.user else None


def _client(args: argparse.Namespace) -> PortalClient:
    """The portal through the workload's API socket inside a desktop or job (it has no
    network), else over HTTP."""
    from portal.client import PortalClient
    from vre.client import unix_socket_pool
    from vre.config import load_config

    socket_path = os.environ.get("VRE_API_SOCKET")
    if socket_path and not args.portal:
        return PortalClient("http://localhost", _tokens(args), pool=unix_socket_pool(socket_path))
    return PortalClient(args.portal or load_config().url_of("portal"), _tokens(args))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[("" if c is None else str(c)) for c in r]
                                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def cmd_flavors(client: PortalClient, args: argparse.Namespace) -> str:
    flavors = client.flavors(args.project)
    if args.json:
        return json.dumps(flavors, indent=2, default=str)
    rows = [(f["name"], f["cpus"], f"{f['memory_mib'] / 1024:g} GiB",
             f"{f['gpus']}{' ' + f['gpu_model'] if f.get('gpu_model') else ''}",
             f"{f['max_runtime_minutes'] / 60:g} h",
             "yes" if f.get("usable", True) else f"no: {f.get('reason') or f.get('refusal')}")
            for f in flavors]
    return _table(rows, ("FLAVOR", "CPUS", "MEMORY", "GPUS", "MAX RUN", "USABLE"))


def cmd_applications(client: PortalClient, args: argparse.Namespace) -> str:
    apps = client.applications(args.kind)
    if args.json:
        return json.dumps(apps, indent=2, default=str)
    rows = [(a["id"], a["kind"], a["image"] + (f"@{a['image_digest']}" if a.get("image_digest")
                                               else ""), a["name"]) for a in apps]
    return _table(rows, ("APPLICATION", "KIND", "IMAGE", "NAME"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre-job", description=__doc__)
    parser.add_argument("--portal", help="portal URL (default: VRE_PORTAL_URL or the local one)")
    parser.add_argument("--token", help="bearer token (default: $VRE_TOKEN)")
    parser.add_argument("--user", help="sign in as this user; password read from stdin")
    sub = parser.add_subparsers(dest="command", required=True)
    flavors = sub.add_parser("flavors", help="list the resource flavors you may use")
    flavors.add_argument("--project", action="append", help="for work in this project")
    flavors.set_defaults(func=cmd_flavors)
    apps = sub.add_parser("applications", help="list the images jobs and desktops run")
    apps.add_argument("--kind", choices=("desktop", "batch"))
    apps.set_defaults(func=cmd_applications)
    for p in (flavors, apps):
        p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from portal.client import PortalError
    from vre.config import ConfigError

    try:
        print(args.func(_client(args), args))
    except ConfigError as exc:
        print(f"vre-job: {exc}", file=sys.stderr)
        return 2
    except (PortalError, OSError) as exc:
        print(f"vre-job: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
