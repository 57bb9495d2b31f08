"""Database plumbing shared by the services: one engine per service (its own SQLite file, or its
own PostgreSQL schema), request-scoped sessions, and Alembic migrations run and checked."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from vre.config import Config

log = logging.getLogger("vre.db")

# Stable constraint names, so migrations written on SQLite apply the same on PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s", "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the services store."""
    return datetime.now(UTC)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp column that is UTC with an explicit offset on every database: stored in UTC
    (SQLite keeps no offset, PostgreSQL answers in the session's zone) and read back aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # the platform's naive times are UTC
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class seconds_between(FunctionElement[float]):
    """Seconds from the timestamp `earlier` to `later`, a float on either database: sums of
    time spans are then the database's work, not one row each for Python."""

    type = sa.Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between, "postgresql")
def _seconds_between_postgresql(element: seconds_between, compiler: SQLCompiler,
                                **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({later}) - ({earlier})) AS DOUBLE PRECISION)"


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


class DatabaseUnavailable(Exception):
    """The database cannot be reached; says where."""


def service_url(config: Config, service: str) -> URL:
    """Where a service keeps its tables: the shared PostgreSQL or its own SQLite file."""
    if config.database_url:
        url = make_url(config.database_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return url
    path = config.home / "db" / f"{service}.sqlite"
    return make_url(f"sqlite:///{path}")


def schema_name(config: Config, service: str) -> str:
    return f"{config.database_schema_prefix}{service}"


def drop_schemas(database_url: str, prefix: str) -> None:
    """Drop every PostgreSQL schema whose name starts with `prefix` (a test's or a
    benchmark's own services), with everything in them."""
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for name in conn.scalars(sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                    {"p": prefix.replace("_", r"\_") + "%"}):
                conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        engine.dispose()


def redact(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def create_engine(config: Config, service: str) -> Engine:
    """An engine bound to the service's own tables, and nothing else."""
    url = service_url(config, service)
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the one writer; foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: a commit is on disk before it is acknowledged (traces are promises).
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    schema = schema_name(config, service)
    if not re.fullmatch(r"[a-z0-9_]+", schema):
        raise ValueError(f"bad schema name {schema!r}")
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10,
        connect_args={"options": f"-csearch_path={schema}", "connect_timeout": 5},
    )


def ensure_schema(engine: Engine, config: Config, service: str) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema_name(config, service)}"'))


def check_reachable(config: Config, service: str) -> None:
    """Raise DatabaseUnavailable with one clear line if the database cannot be reached."""
    engine = create_engine(config, service)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"database unreachable at {redact(engine.url)}: {reason}") from None
    finally:
        engine.dispose()


def bulk_insert(session: Session, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (an order of
    magnitude faster than row-by-row inserts), executemany elsewhere."""
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    quote = conn.dialect.identifier_preparer.quote
    sql = f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def alembic_config(migrations: str, engine: Engine | None = None) -> AlembicConfig:
    """Alembic configuration for a service's migration package, e.g. 'tracer:migrations'."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", migrations)
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, migrations: str) -> None:
    """Bring the service's tables to the newest migration."""
    command.upgrade(alembic_config(migrations, engine), "head")


@functools.cache
def head_revision(migrations: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(migrations)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_FTS_TABLE = re.compile(r".+_fts(_(data|idx|content|docsize|config))?")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's include_name hook: compare everything but SQLite FTS5 tables (and their
    shadow tables), which no model can declare, with the models."""
    return not (type_ == "table" and name is not None and _FTS_TABLE.fullmatch(name))


def run_migrations(context: Any, metadata: sa.MetaData) -> None:
    """Body of every service's alembic env.py: migrate on the engine handed in."""
    engine: Engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata,
                          render_as_batch=engine.dialect.name == "sqlite",
                          include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


_AFTER_COMMIT = "vre.after_commit"  # waits for the transaction to commit
_COMMITTED = "vre.committed"  # its transaction committed: runs once the session is closed
_ON_ROLLBACK = "vre.on_rollback"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's transaction has committed (and the session is
    closed): what must happen only for a change that is kept, such as delivering its trace."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def on_rollback(session: Session, action: Callable[[], None]) -> None:
    """Run `action` if the session's transaction rolls back: undoes what the transaction did
    outside the database (a file it wrote), so a failed action leaves nothing behind."""
    session.info.setdefault(_ON_ROLLBACK, []).append(action)


def _committed(session: Session) -> None:
    session.info.pop(_ON_ROLLBACK, None)
    session.info.setdefault(_COMMITTED, []).extend(session.info.pop(_AFTER_COMMIT, []))


def _rolled_back(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    _run_all(session.info.pop(_ON_ROLLBACK, []))


def _run_all(actions: list[Callable[[], None]]) -> None:
    """Each action in turn; one that fails is logged and does not stop the others (the
    transaction's outcome is decided already)."""
    for action in actions:
        try:
            action()
        except Exception:
            log.exception("an after-transaction action failed")


@dataclass
class Database:
    """A service's engine and session factory, held by its app (no module-level state)."""

    engine: Engine
    sessions: sessionmaker[Session]
    migrations: str
    readers: sessionmaker[Session]

    @classmethod
    def for_service(cls, config: Config, service: str, migrations: str) -> Database:
        engine = create_engine(config, service)
        # Same pool; statements run outside a transaction (no BEGIN, no COMMIT).
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        sessions = sessionmaker(engine, expire_on_commit=False)
        event.listen(sessions, "after_commit", _committed)
        event.listen(sessions, "after_rollback", _rolled_back)
        return cls(engine, sessions, migrations,
                   sessionmaker(autocommit, expire_on_commit=False))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed if the block succeeds, rolled back otherwise."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            _rolled_back(session)  # also when no statement had begun a transaction
            raise
        finally:
            committed = session.info.pop(_COMMITTED, [])
            session.close()
            _run_all(committed)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only, outside any transaction: two round trips fewer than a
        unit of work, for the hot public reads. Each statement sees what was committed when
        it ran; a write here would commit at once, so nothing that writes belongs in it."""
        session = self.readers()
        try:
            yield session
        finally:
            session.close()

    def migrate(self, config: Config, service: str) -> None:
        ensure_schema(self.engine, config, service)
        upgrade(self.engine, self.migrations)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): reachable and migrated to head."""
        try:
            current = current_revision(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            return False, f"database unreachable: {type(exc).__name__}"
        head = head_revision(self.migrations)
        if current != head:
            return False, f"migrations not at head (at {current}, head {head})"
        return True, "ok"
