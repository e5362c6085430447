"""Database fixtures for the storage tests: a fresh SQLite file or a fresh PostgreSQL database per
test, and the rule for an unreachable PostgreSQL: skip on a developer's machine, fail in CI
(CI=true), so a CI run can never pass without having run the PostgreSQL tests.

PostgreSQL comes from KZPOOL_TEST_PG_URL (an asyncpg DSN), default the local server with trust auth.
Each test gets `CREATE DATABASE kzpool_test_<random>`, dropped (WITH FORCE) afterwards.
"""
from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select

from ci_required import unavailable

from pool.db import Database
from pool.models import Share, Worker
from pool.sharelog import ShareRecord

PG_ADMIN_DSN = os.environ.get("KZPOOL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]
# One factor scales every wait in these tests for slow machines (STYLE.md, "Tests").
TIMEOUT_FACTOR = float(os.environ.get("KZPOOL_TEST_TIMEOUT_FACTOR", "1"))


_probe_result: list[str | None] = []


async def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None if it can (probed once per test run)."""
    if not _probe_result:
        try:
            conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
            await conn.close()
            _probe_result.append(None)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            # Refused, unresolvable, auth or missing database: "no PostgreSQL here". Anything
            # else is a bug in the test setup and must not turn into a skip.
            _probe_result.append(f"{type(exc).__name__}: {exc}")
    return _probe_result[0]


async def require_postgres() -> None:
    reason = await postgres_unreachable()
    if reason is None:
        return
    unavailable(f"no PostgreSQL at {PG_ADMIN_DSN} ({reason})", "the PostgreSQL tests")


def sqlalchemy_url(dsn: str, database: str) -> str:
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _admin_execute(sql: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


# DROP DATABASE forces a checkpoint (over a second on a busy machine), so every database a test
# run creates is dropped once, at exit.
_created: list[str] = []


def _drop_created() -> None:
    async def drop_all() -> None:
        for name in _created:
            await _admin_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if _created:
        asyncio.run(drop_all())


atexit.register(_drop_created)


async def create_postgres_database() -> str:
    """A new empty database, dropped when the test run exits; returns its SQLAlchemy URL."""
    name = f"kzpool_test_{secrets.token_hex(6)}"
    await _admin_execute(f"CREATE DATABASE {name}")
    _created.append(name)
    return sqlalchemy_url(PG_ADMIN_DSN, name)


# Migrating costs ~0.2 s and CREATE DATABASE ~0.15 s, so each backend is migrated once per test
# run: PostgreSQL into one `kzpool_test_<random>` database that each test empties (TRUNCATE) and
# that is dropped at exit, SQLite into a template file that each test copies.
_migrated: dict[str, str] = {}
TABLES = ("worker_stats_minute", "blocks", "shares", "workers", "accounts")


async def _migrated_once(backend: str, tmp_root: Path) -> str:
    if backend not in _migrated:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_root}/template.sqlite3"
        else:
            url = await create_postgres_database()
        db = Database(url)
        await db.upgrade()
        await db.close()
        _migrated[backend] = url
    return _migrated[backend]


@asynccontextmanager
async def migrated_database_url(backend: str, tmp_path: Path,
                                tmp_root: Path) -> AsyncIterator[str]:
    if backend == "postgresql":
        await require_postgres()
        url = await _migrated_once(backend, tmp_root)
        db = Database(url)
        async with db.engine.begin() as conn:
            for table in TABLES:  # DELETE beats TRUNCATE on tables this small
                await conn.exec_driver_sql(f"DELETE FROM {table}")
        await db.close()
        yield url
        return
    template = (await _migrated_once(backend, tmp_root)).split("///", 1)[1]
    shutil.copyfile(template, tmp_path / "kzpool.sqlite3")
    yield f"sqlite+aiosqlite:///{tmp_path}/kzpool.sqlite3"


@asynccontextmanager
async def fresh_database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/kzpool.sqlite3"
        return
    await require_postgres()
    yield await create_postgres_database()


@pytest.fixture(params=BACKENDS)
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database (no schema), on each backend."""
    async with fresh_database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The URL of a database upgraded to this kzpool's schema, on each backend."""
    async with migrated_database_url(request.param, tmp_path,
                                     tmp_path_factory.getbasetemp()) as url:
        yield url


@pytest.fixture
async def sqlite_database_url(tmp_path: Path,
                              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database_url("sqlite", tmp_path, tmp_path_factory.getbasetemp()) as url:
        yield url


@pytest.fixture
async def postgres_database_url(tmp_path: Path,
                                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database_url("postgresql", tmp_path,
                                     tmp_path_factory.getbasetemp()) as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.close()


def make_record(i: int, *, worker: str | None = None, at: float | None = None,
                is_block: bool = False) -> ShareRecord:
    """A distinct, valid share record; `i` makes the hash unique."""
    login = worker.split(".", 1)[0] if worker else f"acct{i % 3}"
    return ShareRecord(time=at if at is not None else time.time(), login=login,
                       worker=worker or f"{login}.rig{i % 5}", job_id=f"{i // 100:x}",
                       height=850_000 + i % 7, difficulty=float(2 ** (i % 20)),
                       share_hash=hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
                       is_block=is_block, extranonce1="f000000d", extranonce2=f"{i:016x}",
                       ntime=1_730_000_000 + i, nonce=(i * 2_654_435_761) & 0xFFFFFFFF,
                       version=0x20000000 | (i & 0x1FFFE000), peer=f"198.51.100.{i % 250}:40{i % 100:03d}")


async def stored_share_keys(db: Database) -> list[tuple[str, str]]:
    """(share_hash hex, worker name) of every stored share, duplicates kept."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(Share.share_hash, Worker.name)
                                  .join(Worker, Worker.id == Share.worker_id))
        return [(bytes(share_hash).hex(), worker) for share_hash, worker in rows]
