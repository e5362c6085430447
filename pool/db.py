"""The database handle: one SQLAlchemy AsyncEngine, the schema check and Alembic upgrades.

SQLite (file, WAL) is the embedded default, PostgreSQL (asyncpg) the production database.
SQLite durability: journal_mode=WAL with synchronous=FULL, so every COMMIT fsyncs the WAL before it
returns. NORMAL would only lose commits on power loss, not on a process crash, but a pool must not
lose an acknowledged share to a power cut either; the share log's group commit makes the fsync
cheap (one per batch, ~0.2 ms on this machine).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/kzpool.sqlite3"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# A writer that finds the SQLite file locked waits this long before the statement fails and the
# share log spills to its file instead; long enough to ride out a checkpoint or a compaction chunk.
SQLITE_BUSY_TIMEOUT_MS = 2000
UPGRADE_COMMAND = "kzpool db upgrade"
# After a checkpoint lets the WAL start over, its file is cut back to this size: a big transaction
# (a compaction chunk) must not leave a huge WAL file behind for good.
SQLITE_WAL_LIMIT_BYTES = 64 * 2**20


def _disable_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class SchemaError(RuntimeError):
    """The database schema does not match this kzpool; the message says what to do."""


class SchemaOutdated(SchemaError):
    """The database is empty or at an older revision: `kzpool db upgrade` fixes it."""


class SchemaUnknown(SchemaError):
    """The database is at a revision this kzpool does not know (newer software wrote it)."""


def alembic_config(url: URL | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped inside the package (no alembic.ini),
    so upgrades work from an installed wheel."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Offline SQL generation reads the URL; '%' must be escaped for ConfigParser.
        cfg.set_main_option("sqlalchemy.url",
                            url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "pool/migrations has no revisions"
    return head


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                   f"journal_size_limit={SQLITE_WAL_LIMIT_BYTES}",
                   f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class Database:
    """Owns the AsyncEngine for one database URL. Create once at start, `close()` at shutdown."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL, *, pool_size: int = 5,
                 background_checkpoint: bool = False) -> None:
        self.url: URL = make_url(url)
        self.dialect: str = self.url.get_backend_name()
        self._checkpointer: asyncio.Task[None] | None = None
        # SQLite's automatic WAL checkpoint runs inside whichever commit crosses the threshold: a
        # share-log commit then stalls for the whole checkpoint (the load benchmark's p99 tail). A
        # long-running pool turns it off and checkpoints on a timer instead (`start_checkpointer`).
        self.background_checkpoint = background_checkpoint and self.dialect == "sqlite"
        if self.dialect == "sqlite":
            self._create_sqlite_dir()
            self.engine: AsyncEngine = create_async_engine(self.url)
            event.listen(self.engine.sync_engine, "connect", _set_sqlite_pragmas)
            if self.background_checkpoint:
                event.listen(self.engine.sync_engine, "connect", _disable_autocheckpoint)
        elif self.dialect == "postgresql":
            # pre_ping replaces connections that died while the server was away.
            self.engine = create_async_engine(self.url, pool_size=pool_size, pool_pre_ping=True)
        else:
            raise ValueError(f"database.url: unsupported database {self.dialect!r}, "
                             "expected sqlite+aiosqlite:// or postgresql+asyncpg://")

    def _create_sqlite_dir(self) -> None:
        path = self.url.database
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    @property
    def safe_url(self) -> str:
        """The URL for logs: never print the password."""
        return self.url.render_as_string(hide_password=True)

    def insert_ignoring_duplicates(self, model: type[Any]) -> Insert:
        """INSERT into a model's table that skips rows violating a unique key (ON CONFLICT DO
        NOTHING). Not SQLite's INSERT OR IGNORE: that would also swallow NOT NULL and CHECK
        failures, losing shares."""
        dialect_insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        return dialect_insert(model).on_conflict_do_nothing()

    async def begin_write(self, conn: AsyncConnection) -> None:
        """Start a write transaction that holds the write lock from its first statement.
        SQLite's default deferred BEGIN can fail a later read-then-write with SQLITE_BUSY_SNAPSHOT;
        PostgreSQL needs nothing special."""
        if self.dialect == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision())

    async def check_schema(self) -> None:
        """Raise SchemaOutdated or SchemaUnknown unless the database is at this kzpool's head."""
        current, head = await self.current_revision(), head_revision()
        if current == head:
            return
        where = f"database {self.safe_url}"
        if current is None:
            raise SchemaOutdated(f"{where} has no kzpool schema; run `{UPGRADE_COMMAND}` first")
        known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        if current in known:
            raise SchemaOutdated(f"{where} schema is at revision {current}, this kzpool needs "
                                 f"{head}; run `{UPGRADE_COMMAND}` (back up the database first)")
        raise SchemaUnknown(f"{where} schema is at revision {current}, which this kzpool does not "
                            f"know (its newest is {head}); was it written by a newer kzpool?")

    async def upgrade(self, revision: str = "head") -> None:
        """Run Alembic migrations up to `revision` on this database."""
        before = await self.current_revision()

        def run(sync_conn: Connection) -> None:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, revision)

        async with self.engine.begin() as conn:
            await conn.run_sync(run)
        log.info("event=db_upgrade database=%s from=%s to=%s", self.safe_url, before,
                 await self.current_revision())

    def start_checkpointer(self, interval_s: float = 1.0) -> None:
        """PASSIVE checkpoints on a timer (never blocks writers; what a commit would otherwise do)."""
        if self.background_checkpoint and self._checkpointer is None:
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(interval_s), name="wal-checkpoint")

    async def _checkpoint_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                async with self.engine.connect() as conn:
                    await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=wal_checkpoint_failed error=%s", type(exc).__name__)

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            try:
                await self._checkpointer
            except asyncio.CancelledError:
                pass
            self._checkpointer = None
            if self.background_checkpoint:
                # Leave a short WAL behind: one full checkpoint now that the pool has stopped writing.
                try:
                    async with self.engine.connect() as conn:
                        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                except Exception as exc:
                    log.warning("event=wal_checkpoint_failed error=%s", type(exc).__name__)
        await self.engine.dispose()
