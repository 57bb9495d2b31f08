"""One-machine mode: the data directory, its generated secrets and keys, first-start setup,
and the list of processes `vre up` supervises."""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import requests

from launcher.supervisor import Probe, ProcessSpec, port_in_use
from vre.config import Config, ConfigError, to_env
from vre.db import Database, check_reachable
from vre.services import SERVICES, derive_service_secret
from vre.tokens import generate_signing_key

if TYPE_CHECKING:
    from dataset_service.ingest import IngestReport


@dataclass(frozen=True)
class FirstStart:
    """What the first start created and must tell the operator once."""

    admin_password: str | None
    demo_dir: Path | None
    demo: IngestReport | None = None
    demo_dataset: dict[str, Any] | None = None
    demo_dataset_problem: str | None = None


# What the platform writes is its own: folders 0700, files 0600 (databases, logs, keys,
# secrets, the chain's state). The repository sets its own, group-readable, modes.
PRIVATE_UMASK = 0o077
PRIVATE_FOLDERS = ("db", "logs", "keys", "secrets", "run", "chain")


def private_home(config: Config) -> None:
    """Make the data directory the platform's alone before anything is written in it: a
    private umask for this process and every process it starts, the directory 0700, and
    what an earlier start left in its private folders tightened to 0700/0600."""
    os.umask(PRIVATE_UMASK)
    config.home.mkdir(parents=True, exist_ok=True)
    config.home.chmod(0o700)
    for name in PRIVATE_FOLDERS:
        for folder, _subfolders, files in os.walk(config.home / name):
            os.chmod(folder, 0o700)
            for file in files:
                path = os.path.join(folder, file)
                if not os.path.islink(path):
                    os.chmod(path, 0o600)


def ensure_secrets(config: Config) -> Config:
    """Create the platform's root secret and signing key on first start; keep them after."""
    secrets_file = config.home / "secrets" / "platform.json"
    if config.secret_key:
        root = config.secret_key
    elif secrets_file.is_file():
        root = json.loads(secrets_file.read_text())["secret_key"]
    else:
        secrets_file.parent.mkdir(parents=True, exist_ok=True)
        secrets_file.parent.chmod(0o700)
        root = secrets.token_urlsafe(48)
        secrets_file.touch(mode=0o600)
        secrets_file.write_text(json.dumps({"secret_key": root}))
    if not config.signing_key_path.is_file():
        generate_signing_key(config.signing_key_path)
    if not config.tracer_key_path.is_file():
        from tracer.checkpoints import CheckpointSigner

        CheckpointSigner.generate(config.tracer_key_path)
    if uses_local_chain(config):
        from tracer.chain_config import ensure_chain_key

        ensure_chain_key(config)  # the anchor contract's owner: ours alone, never a dev account
    return config.model_copy(update={"secret_key": root})


def check_database(config: Config) -> None:
    for svc in SERVICES:
        check_reachable(config, svc.name)


def migrate_all(config: Config) -> None:
    for svc in SERVICES:
        db = Database.for_service(config, svc.name, svc.migrations)
        try:
            db.migrate(config, svc.name)
        finally:
            db.engine.dispose()


def first_start(config: Config, *, admin: bool = True) -> FirstStart:
    """Create the administrator, default catalogues and demo data where the directory has none."""
    import sqlalchemy as sa

    from dataset_service.bootstrap import check_drop_folders, demo_folder, load_demo
    from portal.accounts import ensure_admin
    from portal.catalogues import seed_defaults
    from portal.models import User

    check_drop_folders(config)
    portal = next(s for s in SERVICES if s.name == "portal")
    db = Database.for_service(config, portal.name, portal.migrations)
    try:
        with db.session() as session:
            password = ensure_admin(session, config.admin_user, config.admin_password) \
                if admin else None
            seed_defaults(session)  # only while both catalogues are empty
            session.flush()
            admin_id = session.scalar(sa.select(User.id).where(
                User.username == config.admin_user))
    finally:
        db.engine.dispose()
    demo = load_demo(config, admin_id) if config.demo_data and admin_id else None
    return FirstStart(password, demo_folder(config) if demo else None, demo)


def publish_demo(config: Config, started: FirstStart) -> FirstStart:
    """Once the services run after the demo studies came in: publish the demo dataset as the
    administrator (its project's steward), so the public catalogue is not empty. A refusal
    is reported, not fatal: the platform runs without it."""
    from dataset_service.bootstrap import publish_demo as publish
    from dataset_service.client import DatasetClient
    from vre.client import ServiceError
    from vre.service_auth import IssuedToken

    password = started.admin_password or config.admin_password
    if password is None:
        return replace(started, demo_dataset_problem="the administrator's password is unknown")
    tokens = IssuedToken.for_user(config.url_of("portal"), config.admin_user, password)
    try:
        record = publish(DatasetClient(config.url_of("dataset_service"), tokens))
    except (ServiceError, PermissionError, requests.RequestException) as exc:
        return replace(started, demo_dataset_problem=str(exc))
    return replace(started, demo_dataset=record)


def service_env(config: Config, service_name: str) -> dict[str, str]:
    """The environment a service process starts with: the resolved configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update(to_env(config))
    if service_name != "portal":
        # Services other than the portal get only their derived client secret.
        env.pop("VRE_SECRET_KEY", None)
        env["VRE_SERVICE_SECRET"] = derive_service_secret(config.secret_key or "", service_name)
    return env


def uses_local_chain(config: Config) -> bool:
    """No chain configured: run the development node in the data directory."""
    return config.chain_url is None


def chain_spec(config: Config) -> ProcessSpec:
    """The local Ethereum development node, its state kept in the data directory, reachable
    only through its IPC socket in an owner-only folder (see tracer.devnode)."""
    from tracer.devnode import AnvilNotFound, private_node_argv

    state = config.home / "chain" / "anvil-state.json"
    socket_path = Path(config.chain_rpc_url)
    try:
        argv = private_node_argv(socket_path, state, config.chain_port)
    except AnvilNotFound as exc:
        raise ConfigError("VRE_CHAIN_URL", str(exc)) from None

    def private_folder() -> None:
        # Made owner-only before the node creates its socket there, on every (re)start.
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.parent.chmod(0o700)

    # Stopped last, the node itself (not its wrapper), with time of its own to write the
    # chain's state: killed while writing it, it leaves an empty file and the anchors are lost.
    return ProcessSpec("chain", argv, ready_timeout=30, before_start=private_folder,
                       stop_grace=60, stop_wrapped=True,
                       probe=Probe("jsonrpc", str(socket_path)))


def ensure_contract(config: Config) -> Config:
    """On the local chain: deploy the anchor contract on first start, reuse it afterwards."""
    from tracer.chain_config import chain_client, contract_address, contract_file

    address = contract_address(config)
    if address is None:
        if not uses_local_chain(config):
            raise ConfigError("VRE_CHAIN_CONTRACT",
                              "is required with an external chain (deploy with 'vre-trace deploy')")
        address = chain_client(config, None, writer=True).deploy()
        path = contract_file(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"address": address, "chain_url": config.chain_rpc_url}))
    return config.model_copy(update={"chain_contract": address})


def service_specs(config: Config) -> list[ProcessSpec]:
    """The web services, the anchoring worker and the compute agent, in start order."""
    specs = []
    for name in ("tracer", "dataset_service", "portal"):
        specs.append(ProcessSpec(
            name=name, argv=[sys.executable, "-m", "launcher", "serve", name],
            env=service_env(config, name), ready_url=config.url_of(name) + "/readyz",
            port=config.port_of(name)))
        if name == "tracer":
            status = config.home / "run" / "anchor-status.json"
            status.unlink(missing_ok=True)
            specs.append(ProcessSpec(
                name="anchor", argv=[sys.executable, "-m", "tracer", "worker"],
                env=service_env(config, "tracer"), ready_timeout=60,
                probe=Probe("heartbeat", str(status), max_age=30)))
    from portal.compute.agent import socket_path

    agent_socket = socket_path(config)
    agent_socket.unlink(missing_ok=True)
    specs.append(ProcessSpec(
        name="compute-agent", argv=[sys.executable, "-m", "portal.compute.agent"],
        env=service_env(config, "portal"), ready_check=agent_socket.exists, ready_timeout=30))
    from portal.compute.gateway import heartbeat_path

    beat = heartbeat_path(config)
    beat.unlink(missing_ok=True)
    specs.append(ProcessSpec(
        name="workload-gateway", argv=[sys.executable, "-m", "portal.compute.gateway"],
        env=service_env(config, "portal"), ready_timeout=60,
        probe=Probe("heartbeat", str(beat), max_age=30)))
    specs.append(ProcessSpec(
        name="vnc-proxy", argv=[sys.executable, "-m", "portal.vncproxy"],
        env=service_env(config, "portal"), port=config.vnc_proxy_port,
        ready_check=lambda: port_in_use(config.host, config.vnc_proxy_port), ready_timeout=30))
    return specs


def ports_needed(config: Config) -> list[ProcessSpec]:
    """Every process that listens, for the port check before anything starts."""
    listening = [ProcessSpec(s.name, [], port=config.port_of(s.name)) for s in SERVICES]
    listening.append(ProcessSpec("vnc-proxy", [], port=config.vnc_proxy_port))
    # The local chain node listens in a network namespace of its own: no port here.
    return listening


def print_banner(config: Config, started: FirstStart, out: IO[str]) -> None:
    print(f"VRE is up. Portal: {config.url_of('portal')}/", file=out)
    print(f"  dataset service: {config.url_of('dataset_service')}/   "
          f"tracer: {config.url_of('tracer')}/", file=out)
    print(f"  ledger chain: {config.chain_rpc_url}   anchor contract: {config.chain_contract}",
          file=out)
    print(f"  data directory: {config.home}   logs: {config.home / 'logs'}", file=out)
    if started.admin_password:
        print(f"  first start: administrator '{config.admin_user}' with password "
              f"{started.admin_password}  (shown once; change it after signing in)", file=out)
    if started.demo is not None:
        print(f"  demo data: {started.demo.studies_ingested} studies "
              f"({started.demo.files_ingested} DICOM files) ingested into project 'demo' "
              f"from {started.demo_dir}", file=out)
    if started.demo_dataset is not None:
        print(f"  demo dataset published: {config.url_of('portal')}/datasets/"
              f"{started.demo_dataset['id']}", file=out)
    elif started.demo_dataset_problem:
        print(f"  demo dataset not published: {started.demo_dataset_problem}", file=out)
    print("Press Ctrl-C to stop.", file=out, flush=True)
