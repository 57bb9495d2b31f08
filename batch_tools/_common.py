"""What the researchers' commands (`vre-job`, `vre-export`) share: who they act as, how they
reach the portal, how they print, and how a failure becomes one line and an exit status.
Light on purpose: the client, the configuration and HTTP are imported only when a command
runs, so `--help` and a mistyped command answer at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portal.client import PortalClient
    from vre.service_auth import TokenSource

EXIT_CODES = """\
exit status:
  0    success
  1    the platform refused the request
  2    usage or configuration error
  3    the platform cannot be reached, or failed on its side
"""


class CommandError(Exception):
    """What a command finds wrong on this side: one line with a stable code, like the
    platform's refusals, and the exit status it means."""

    def __init__(self, code: str, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_status = exit_status


def global_options(parser: argparse.ArgumentParser) -> None:
    """Where the portal is and who the command acts as."""
    parser.add_argument("--portal", help="portal URL (default: VRE_PORTAL_URL or the local one)")
    parser.add_argument("--token", help="bearer token (default: $VRE_TOKEN)")
    parser.add_argument("--user", help="sign in as this user; password read from stdin")


def tokens(args: argparse.Namespace, prog: str) -> TokenSource | None:
    """One given (--token, VRE_TOKEN), the workload's own that the platform keeps current
    (VRE_TOKEN_FILE, inside a desktop or job), or a user's (password on stdin)."""
    from vre.config import load_config
    from vre.service_auth import FileToken, StaticToken, command_line_tokens

    token = args.token or os.environ.get("VRE_TOKEN")
    if token:
        return StaticToken(token)
    if os.environ.get("VRE_TOKEN_FILE") and not args.user:
        return FileToken(os.environ["VRE_TOKEN_FILE"])
    return command_line_tokens(load_config(), None, args.user, client=prog) \
        if args.user else None


def client(args: argparse.Namespace, prog: str) -> PortalClient:
    """The portal through the workload's API socket inside a desktop or job (it has no
    network), else over HTTP."""
    from portal.client import PortalClient
    from vre.client import unix_socket_pool
    from vre.config import load_config

    socket_path = os.environ.get("VRE_API_SOCKET")
    if socket_path and not args.portal:
        return PortalClient("http://localhost", tokens(args, prog),
                            pool=unix_socket_pool(socket_path))
    return PortalClient(args.portal or load_config().url_of("portal"), tokens(args, prog))


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[("" if c is None else str(c)) for c in r]
                                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`key: value` lines, values aligned; an absent value shows as "-"."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {'-' if value in (None, '') else value}"
                     for key, value in pairs)


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def report(prog: str, error: CommandError) -> int:
    """Say what is wrong in one line, with its code: the exit status it means."""
    print(f"{prog}: {error.message} ({error.code})", file=sys.stderr)
    return error.exit_status


def run(prog: str, func: Callable[[PortalClient, argparse.Namespace], int],
        args: argparse.Namespace) -> int:
    """Run a parsed command against the portal; a failure is one line on stderr, with its
    code, and the exit status of EXIT_CODES."""
    from portal.client import PortalError, PortalUnavailable
    from vre.config import ConfigError

    try:
        return func(client(args, prog), args)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except PortalError as exc:
        print(f"{prog}: {exc.message} ({exc.code})", file=sys.stderr)
        return 3 if isinstance(exc, PortalUnavailable) else 1
    except CommandError as exc:
        return report(prog, exc)
    except OSError as exc:  # on this side: a token file that cannot be read
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
