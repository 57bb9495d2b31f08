"""The `vre` command: run the whole platform on one machine (`up`), see how it is doing
(`status`), serve one service (`serve`), and migrate databases (`migrate`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from launcher.supervisor import Supervisor, SupervisorError, read_status
from vre.config import Config, ConfigError, load_config
from vre.db import Database, DatabaseUnavailable
from vre.services import SERVICES, service


def _fail(message: str, code: int = 1) -> int:
    print(f"vre: error: {message}", file=sys.stderr, flush=True)
    return code


def _config(args: argparse.Namespace) -> Config:
    overrides = {"home": Path(args.home)} if getattr(args, "home", None) else {}
    return load_config(**overrides)


def cmd_up(args: argparse.Namespace) -> int:
    """Start every process of the platform and keep them running until Ctrl-C."""
    from launcher import local
    from tracer.chain import ChainError

    config = _config(args)
    local.private_home(config)
    config = local.ensure_secrets(config)
    supervisor = Supervisor(config.home)
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        supervisor.lock()
        supervisor.check_ports(local.ports_needed(config), config.host)
        local.check_database(config)
        local.migrate_all(config)
        started = local.first_start(config)
        if local.uses_local_chain(config):
            supervisor.start(local.chain_spec(config))
        config = local.ensure_contract(config)
        for spec in local.service_specs(config):
            if stopping:
                break
            supervisor.start(spec)
    except (SupervisorError, DatabaseUnavailable, ChainError, ConfigError) as exc:
        supervisor.stop_all()
        return _fail(str(exc))
    except BaseException:
        supervisor.stop_all()
        raise
    if stopping:
        supervisor.stop_all()
        return 0
    if started.demo is not None:
        started = local.publish_demo(config, started)
    local.print_banner(config, started, sys.stdout)
    # A process that dies is restarted with back-off; the others keep serving meanwhile.
    supervisor.watch(lambda: stopping,
                     lambda event: print(f"vre: {event}", file=sys.stderr, flush=True))
    supervisor.stop_all()
    print("VRE stopped.", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """List the platform's processes and their health; non-zero if any is unwell."""
    config = _config(args)
    state, statuses = read_status(config.home)
    if state is None:
        print(f"VRE is not running (data directory {config.home})")
        return 3
    print(f"VRE supervisor pid {state['pid']}, data directory {state['home']}")
    print(f"{'process':<18}{'pid':>8}{'restarts':>10}  health")
    for st in statuses:
        print(f"{st.name:<18}{st.pid:>8}{st.restarts:>10}  {st.health}")
    return 0 if all(s.health in ("ready", "running") for s in statuses) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve one service in the foreground (what `vre up` runs for each)."""
    from launcher.serve import checked_before_fork, serve

    config = _config(args)
    svc = service(args.service)
    # The workers build the app from the environment: it must say what was resolved here.
    os.environ["VRE_HOME"] = str(config.home)
    checked_before_fork(svc.name, config)  # a bad configuration stops here, with its message
    serve(svc, config, config.port_of(svc.name))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the named services' tables (default: all) to the newest migration."""
    config = _config(args)
    for svc in SERVICES:
        if args.services and svc.name not in args.services:
            continue
        db = Database.for_service(config, svc.name, svc.migrations)
        db.migrate(config, svc.name)
        print(f"{svc.name}: at {db.readiness()[1]}")
        db.engine.dispose()
    if args.seed or args.admin:
        from launcher import local

        # A cluster's first start: default catalogues and, with local accounts, the
        # administrator. Demo data stays with `vre up`.
        started = local.first_start(config.model_copy(update={"demo_data": False}),
                                    admin=args.admin)
        if started.admin_password:
            print(f"administrator {config.admin_user!r} created; password (shown once): "
                  f"{started.admin_password}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole platform on this machine")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="list the platform's processes and their health")
    status.set_defaults(func=cmd_status)
    serve = sub.add_parser("serve", help="serve one service in the foreground")
    serve.add_argument("service", choices=[s.name for s in SERVICES])
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("services", nargs="*", choices=[[]] + [s.name for s in SERVICES])
    migrate.add_argument("--seed", action="store_true",
                         help="then create the default flavors and applications where the "
                         "catalogues are empty")
    migrate.add_argument("--admin", action="store_true",
                         help="then create the administrator of local accounts if missing "
                         "(password from VRE_ADMIN_PASSWORD, else generated and printed once)")
    migrate.set_defaults(func=cmd_migrate)
    for p in (up, status, serve, migrate):
        p.add_argument("--home", help="data directory (default: $VRE_HOME or ./var)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Files the platform creates (databases, logs, keys) are readable by it alone.
    from launcher.local import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(f"configuration: {exc}", 2)
    except DatabaseUnavailable as exc:
        return _fail(str(exc))
