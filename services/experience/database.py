"""Engines for the store's two backends, and schema migration on open.

SQLite (embedded default, one file): WAL journal so readers never block the
writer, `synchronous=FULL` so a committed (acknowledged) write survives a crash
or power loss, a 30 s busy timeout, and every transaction opened with
`BEGIN IMMEDIATE` so a read-then-write transaction takes the write lock up front
instead of failing with "database is locked" when another process wrote first.

PostgreSQL (several processes share one store): `postgresql://` URLs use the
psycopg 3 driver; connections are checked before use so a restarted server costs
failed writes, not a broken pool.

Migrations: Alembic with a programmatic config, scripts in `migrations/`, run to
head on every open inside one transaction that holds a lock (the SQLite write
lock, a PostgreSQL advisory lock), so processes opening the same store at once
migrate it exactly once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "experience_schema_version"
_MIGRATION_LOCK = 0x5E1F_FEED  # pg_advisory_xact_lock key for migrations
READ_ONLY = "experience_read_only"  # execution option: a plain deferred BEGIN on SQLite


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean the psycopg 3 driver (psycopg2 is not installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_engine(url: str) -> Engine:
    """An engine for a `sqlite:///path` or `postgresql+psycopg://...` URL, set up for durability."""
    parsed = make_url(normalize_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("the experience store needs a SQLite file (sqlite:///path/to/experience.db), not memory")
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True)
    raise ValueError(f"unsupported experience store URL {url!r}: use sqlite:///FILE or postgresql+psycopg://...")


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the driver stops opening transactions; _sqlite_on_begin does
    cursor = dbapi_connection.cursor()
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _switch_to_wal(cursor, attempts: int = 50, pause_s: float = 0.1) -> None:
    """Sets WAL mode, retrying while another process holds the lock: SQLite answers "database is locked" to
    a journal-mode change at once, without its busy timeout, when several processes open a new store together."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def _sqlite_on_begin(connection: sa.Connection) -> None:
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade_to_head(engine: Engine) -> str:
    """Migrates the database to the newest schema (a no-op when it is there); returns the revision."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    revision = current_revision(engine)
    log.info("experience store schema at revision %s (%s)", revision, engine.url.render_as_string(hide_password=True))
    return revision or ""
