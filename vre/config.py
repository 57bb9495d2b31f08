"""The one configuration loader of the platform: VRE_* environment variables and an optional
TOML file, validated once at start-up into a frozen, typed object."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "VRE_"
SERVICES = ("portal", "dataset_service", "tracer")


class ConfigError(Exception):
    """A configuration value is unknown, malformed or missing; names the key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"must be a URL with scheme {' or '.join(schemes)}, got {value!r}")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"URL has no host: {value!r}")
    if parts.scheme == "file" and not parts.path:
        raise ValueError(f"file URL has no path: {value!r}")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"URL has an invalid port: {value!r}") from exc
    return value.rstrip("/") if parts.scheme in ("http", "https") else value


PLATFORM_ROLES = ("researcher", "steward", "admin", "auditor")


def _parse_role_map(value: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        source, sep, target = (s.strip() for s in pair.partition("="))
        if not sep or not source:
            raise ValueError(f"expected provider-role=platform-role pairs, got {pair!r}")
        if target not in PLATFORM_ROLES:
            raise ValueError(f"{target!r} is not a platform role ({', '.join(PLATFORM_ROLES)})")
        mapping[source] = target
    return mapping


class Config(BaseModel):
    """Every setting of the platform. Each field documents itself; env name is VRE_ + upper."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    home: Path = Field(Path("var"), description="Data directory that holds all local state.")
    config_file: Path | None = Field(None, description="Optional TOML file with these settings.")
    host: str = Field("127.0.0.1", description="Interface the services listen on.")
    portal_port: int = Field(8600, ge=1, le=65535, description="Port of the portal.")
    dataset_port: int = Field(8601, ge=1, le=65535, description="Port of the dataset service.")
    tracer_port: int = Field(8602, ge=1, le=65535, description="Port of the tracer.")
    portal_url: str | None = Field(None, description="Base URL of the portal.")
    dataset_url: str | None = Field(None, description="Base URL of the dataset service.")
    tracer_url: str | None = Field(None, description="Base URL of the tracer.")
    database_url: str | None = Field(
        None,
        description="postgresql://... to use PostgreSQL (one schema per service); "
        "default: one SQLite file per service under home/db.",
    )
    database_schema_prefix: str = Field(
        "", pattern=r"^[a-z0-9_]*$", description="Prefix of each service's PostgreSQL schema."
    )
    secret_key: str | None = Field(
        None, min_length=32, description="Root secret of the portal (sessions, service creds)."
    )
    service_secret: str | None = Field(
        None, min_length=32, description="Client secret this service uses to get tokens."
    )
    token_issuer: str | None = Field(None, description="Expected 'iss' of tokens.")
    token_audience: str = Field("vre", description="Expected 'aud' of tokens.")
    jwks_url: str | None = Field(None, description="Where the issuer's public keys are.")
    token_ttl_seconds: int = Field(
        300, ge=30, le=86400,
        description="Lifetime of access tokens (revocation refuses them sooner).")
    revocation_feeds: str = Field(
        "portal,dataset_service", pattern=r"^(|(portal|dataset_service)"
        r"(,(portal|dataset_service))*)$",
        description="Services whose revocation feeds (disabled accounts, changed passwords, "
        "revoked tokens, workloads and people) this service reads, comma separated; a "
        "service reads its own records directly. Empty: none.")
    revocation_max_age_seconds: float = Field(
        5.0, ge=0, le=3600, description="Read each revocation feed again after this long.")
    revocation_grace_seconds: float = Field(
        60.0, ge=0, le=86_400, description="While a revocation feed cannot be read, its last "
        "answer stands this long; then people's requests are refused until it answers.")
    signing_key_file: Path | None = Field(
        None, description="PEM private key the portal signs tokens with."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted, in bytes."
    )
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    admin_user: str = Field("admin", pattern=r"^[a-z][a-z0-9_.-]{1,63}$")
    admin_password: str | None = Field(None, min_length=8, description="First admin's password.")
    demo_data: bool = Field(True, description="Load demo data on first start.")
    threads: int = Field(8, ge=1, le=64, description="Python threads running requests per "
                         "service process (requests wait on databases and other services).")
    workers: int = Field(1, ge=1, le=64, description="Processes per service (server "
                         "workers); pages are CPU-bound, so more processes use more cores.")
    tracer_key_file: Path | None = Field(
        None, description="PEM Ed25519 key the tracer signs checkpoints with.")
    ledger_origin: str = Field("vre-ledger", pattern=r"^[A-Za-z0-9._/-]{1,100}$",
                               description="Name of the log in its signed checkpoints.")
    chain_url: str | None = Field(None, description="JSON-RPC URL of the chain node.")
    chain_port: int = Field(8645, ge=1, le=65535, description="Port of the local chain node "
                            "inside its own network namespace (it is reached by IPC socket).")
    chain_contract: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="Address of the anchor contract.")
    chain_private_key: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{64}$", description="Key of the tracer's chain account.")
    anchor_interval_seconds: float = Field(
        5.0, gt=0, le=3600, description="Anchor the newest checkpoint at least this often.")
    anchor_batch_traces: int = Field(
        1000, ge=1, description="...or as soon as this many traces are waiting.")
    outbox_wait_seconds: float = Field(
        2.0, gt=0, le=60, description="How long an action waits, after it committed, for "
        "the tracer to acknowledge its trace; one not acknowledged by then stays in the "
        "service's outbox and is delivered later.")
    outbox_retry_seconds: float = Field(
        1.0, gt=0, le=600, description="First pause before a trace the tracer did not "
        "acknowledge is sent again; it doubles at each failure, up to a minute.")
    import_root: Path | None = Field(
        None, description="Folder that holds each project's drop folder, <import root>/<project>, "
        "the only place its stewards ingest from (default: <home>/import).")
    deid_policy_file: Path | None = Field(
        None, description="TOML de-identification policy that replaces the default profile.")
    ingest_workers: int = Field(0, ge=0, le=64, description="Header readers (0: one a core).")
    search_backend: str = Field("database", pattern=r"^(database|elasticsearch)$",
                                description="Catalogue search: database full text or ES.")
    elasticsearch_url: str | None = Field(None, description="Elasticsearch URL.")
    publisher: str = Field("In-situ VRE", max_length=200,
                           description="Organisation named as publisher in dataset metadata.")
    pid_base_url: str | None = Field(
        None, description="Base of persistent identifiers (default: portal URL + /pid).")
    small_cell_threshold: int = Field(
        5, ge=1, le=1000, description="Public statistics of a dataset show a count of people "
        "(or series) below this as '< N' (small-cell suppression); 1 shows every count.")
    anchor_mode: str = Field(
        "batch", pattern=r"^(batch|per-trace)$",
        description="per-trace also anchors every leaf hash in its own transaction.")
    vnc_proxy_port: int = Field(8603, ge=1, le=65535,
                                description="Port of the desktops' VNC WebSocket proxy.")
    novnc_path: Path = Field(
        Path("/usr/share/novnc"), description="Folder of the noVNC browser client (Debian's "
        "novnc package) whose ES modules the portal serves to the desktop viewer; only its "
        "core/ and vendor/ scripts are served.")
    compute_backend: str = Field(
        "local", pattern=r"^(local)$",
        description="Where desktops and jobs run: a bubblewrap sandbox on this machine (local).")
    workload_user: str = Field(
        "vre-workload", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="Unprivileged host account the local sandboxes run as (created if missing).")
    desktop_max_lifetime_hours: float = Field(
        24.0, gt=0, le=24 * 31,
        description="Longest a desktop may run, from its start, however often it is extended; "
        "it first expires after its flavor's maximum run time.")
    desktop_extend_minutes: float = Field(
        60.0, gt=0, le=24 * 60,
        description="How much later each extension of a desktop moves its expiry (never "
        "past its maximum lifetime).")
    desktop_idle_minutes: float = Field(
        30.0, gt=0, le=7 * 24 * 60,
        description="A desktop with no viewer connected and no input for this long is warned "
        "that it will be stopped.")
    desktop_idle_grace_minutes: float = Field(
        10.0, ge=0, le=24 * 60,
        description="How long after that warning an idle desktop is stopped, unless a viewer "
        "connects or input arrives meanwhile.")
    desktop_watch_seconds: float = Field(
        5.0, gt=0, le=3600,
        description="How often the compute agent checks running workloads against revoked "
        "owners, ended grants and invalidated datasets.")
    identity: str = Field(
        "local", pattern=r"^(local|oidc)$",
        description="Who signs people in to the portal: local accounts, or an OpenID Connect "
        "provider laid out like Keycloak (oidc).")
    oidc_server_url: str | None = Field(
        None, description="Base URL of the Keycloak server, before /realms/<realm>.")
    oidc_realm: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Keycloak realm of the platform.")
    oidc_client_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._:-]{1,100}$",
        description="The portal's client id at the provider.")
    oidc_client_secret: str | None = Field(
        None, min_length=8, repr=False,
        description="The portal's client secret (confidential client; unset for a public one).")
    oidc_role_map: str = Field(
        "researcher=researcher,steward=steward,admin=admin,auditor=auditor",
        description="Provider role=platform role pairs, comma separated; realm roles and the "
        "portal client's roles both count, unmapped roles are ignored.")
    signin_limit_per_address: int = Field(
        30, ge=1, le=10_000, description="Sign-in attempts allowed per client address a minute.")
    page_cache_seconds: int = Field(
        30, ge=0, le=3600, description="How long the portal keeps public pages (catalogue, "
        "landing pages) it served to anonymous visitors; a kept page is served only while "
        "the catalogue's generation it was drawn at holds. 0 turns the cache off.")
    catalogue_cache_seconds: int = Field(
        600, ge=0, le=86_400, description="How long the dataset service keeps a catalogue "
        "search or a published record it answered (and names it with an ETag that callers "
        "revalidate); any change to the catalogue retires older answers at once, so this "
        "only bounds how long an unchanged catalogue's answers stay. 0 turns it off.")
    signin_limit_per_user: int = Field(
        10, ge=1, le=10_000, description="Sign-in attempts allowed per client address and "
        "user name together a minute (never per name alone: that would let anyone keep an "
        "account out).")
    host_cpus: float | None = Field(
        None, gt=0, description="CPUs one desktop or job may get at most (the largest node); "
        "default: this machine's cores.")
    host_memory_mib: int | None = Field(
        None, gt=0, description="Memory one desktop or job may get at most, in MiB; "
        "default: this machine's memory.")
    export_reviewers: int = Field(
        2, ge=1, le=5, description="Independent reviewers an export request needs (each "
        "file's votes are hidden from the others until all are in).")
    export_threshold: int = Field(
        10, ge=1, le=1000, description="Smallest count a table in an export may show; "
        "smaller counts and zeros are flagged for the reviewers.")
    export_max_files: int = Field(100, ge=1, le=100_000, description="Files per export "
                                  "request at most.")
    export_max_bytes: int = Field(1 << 30, ge=1, description="Bytes per export request at "
                                  "most, all files together.")
    export_max_file_bytes: int = Field(512 << 20, ge=1, description="Bytes per exported "
                                       "file at most.")
    smtp_host: str | None = Field(
        None, description="Mail server notifications are sent through by e-mail; none: they "
        "are shown in the portal only.")
    smtp_port: int = Field(25, ge=1, le=65535, description="Port of the mail server.")
    smtp_from: str = Field("vre@localhost", min_length=3, max_length=254,
                           description="Sender address of notification e-mails.")
    job_cpus: float | None = Field(
        None, gt=0, description="CPUs the job queue hands out on one machine at once (jobs "
        "wait beyond it); default: this machine's cores. Desktops are not counted.")
    job_memory_mib: int | None = Field(
        None, gt=0, description="Memory the job queue hands out on one machine at once, in "
        "MiB; default: this machine's memory.")
    gpu_devices: list[str] | None = Field(
        None, description="The GPUs of this machine jobs may be given, as CUDA_VISIBLE_DEVICES "
        "names them (e.g. 0,1); default: what nvidia-smi lists.")
    host_gpus: int | None = Field(
        None, ge=0, description="GPUs one desktop or job may get at most; default: the "
        "NVIDIA devices of this machine.")

    @field_validator("gpu_devices", mode="before")
    @classmethod
    def _device_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: "0,1"; "" declares none
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gpu_devices")
    @classmethod
    def _device_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
                raise ValueError(f"{name!r} is not a GPU name CUDA_VISIBLE_DEVICES takes")
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("portal_url", "dataset_url", "tracer_url", "token_issuer")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("elasticsearch_url", "pid_base_url")
    @classmethod
    def _other_urls(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("chain_url", "oidc_server_url")
    @classmethod
    def _chain_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("oidc_role_map")
    @classmethod
    def _role_map(cls, value: str) -> str:
        _parse_role_map(value)
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https", "file"))

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = urlsplit(value).scheme.split("+")[0]
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(f"must be a postgresql:// or sqlite:// URL, got {value!r}")
        return value

    # Derived values: callers ask these, never recompute them.
    def url_of(self, service: str) -> str:
        """Base URL of a service, defaulting to the local host and port."""
        explicit = {"portal": self.portal_url, "dataset_service": self.dataset_url,
                    "tracer": self.tracer_url}[service]
        return explicit or f"http://{self.host}:{self.port_of(service)}"

    def port_of(self, service: str) -> int:
        """Port a service listens on."""
        return {"portal": self.portal_port, "dataset_service": self.dataset_port,
                "tracer": self.tracer_port}[service]

    @property
    def oidc_issuer(self) -> str | None:
        """The realm's issuer URL when identity is oidc (Keycloak's layout)."""
        if self.identity != "oidc" or not self.oidc_server_url or not self.oidc_realm:
            return None
        return f"{self.oidc_server_url}/realms/{self.oidc_realm}"

    @property
    def oidc_roles(self) -> dict[str, str]:
        """Provider role name to platform role name."""
        return _parse_role_map(self.oidc_role_map)

    @property
    def issuer(self) -> str:
        return self.token_issuer or self.oidc_issuer or self.url_of("portal")

    @property
    def portal_issuer(self) -> str:
        """Who the portal signs the tokens it makes as (services', workloads', VNC tickets):
        the issuer of people's tokens too, unless they sign in at an identity provider."""
        return self.url_of("portal") if self.oidc_issuer else self.issuer

    @property
    def portal_jwks(self) -> str:
        """Where the portal's own signing keys are published."""
        return self.url_of("portal") + "/.well-known/jwks.json" if self.oidc_issuer \
            else self.jwks

    @property
    def jwks(self) -> str:
        if self.jwks_url:
            return self.jwks_url
        if self.oidc_issuer:
            return self.oidc_issuer + "/protocol/openid-connect/certs"
        return self.url_of("portal") + "/.well-known/jwks.json"

    @property
    def revocation_feed_names(self) -> tuple[str, ...]:
        """The services named in revocation_feeds."""
        return tuple(dict.fromkeys(n for n in self.revocation_feeds.split(",") if n))

    @property
    def tracer_key_path(self) -> Path:
        return self.tracer_key_file or self.home / "keys" / "tracer-checkpoint.pem"

    @property
    def import_root_path(self) -> Path:
        return (self.import_root or self.home / "import").expanduser().resolve()

    @property
    def repository_path(self) -> Path:
        return self.home / "repository"

    @property
    def pid_base(self) -> str:
        return self.pid_base_url or self.url_of("portal") + "/pid"

    @property
    def chain_rpc_url(self) -> str:
        """The chain node: its URL, or the local node's IPC socket (in an owner-only folder)."""
        return self.chain_url or str(self.home / "chain" / "ipc" / "node.ipc")

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.home / "keys" / "token-signing.pem"

    def require(self, *keys: str) -> None:
        """Stop start-up if a setting this service cannot run without is missing."""
        for key in keys:
            if getattr(self, key) in (None, ""):
                raise ConfigError(env_name(key), "is required but not set")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    known = {env_name(name): name for name in Config.model_fields}
    values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        if key not in known:
            raise ConfigError(key, "unknown setting")
        values[known[key]] = value
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("VRE_CONFIG_FILE", f"file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("VRE_CONFIG_FILE", f"{path} is not valid TOML: {exc}") from exc
    for key in data:
        if key not in Config.model_fields or key == "config_file":
            raise ConfigError(f"{path}: {key}", "unknown setting")
    return data


def load_config(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the configuration from a file (if VRE_CONFIG_FILE), then env, then overrides."""
    env = os.environ if env is None else env
    from_env = _from_env(env)
    values: dict[str, Any] = {}
    if "config_file" in from_env or "config_file" in overrides:
        path = Path(overrides.get("config_file") or from_env["config_file"])
        values.update(_from_file(path))
    values.update(from_env)
    values.update(overrides)
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise ConfigError(env_name(field), first["msg"]) from None


def to_env(config: Config) -> dict[str, str]:
    """Render a configuration back into VRE_* variables, to hand it to a child process."""
    env: dict[str, str] = {}
    for name, value in config.model_dump(exclude_none=True).items():
        if name == "config_file":
            continue
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
