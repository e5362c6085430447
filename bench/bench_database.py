"""A fresh, migrated database for a benchmark run: a temporary SQLite file, or a
`kzpool_bench_<random>` PostgreSQL database dropped afterwards."""
from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text

from pool.db import Database

PG_ADMIN_URL = os.environ.get("KZPOOL_BENCH_PG_URL",
                              "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def fresh_database(backend: str, pg_admin_url: str = PG_ADMIN_URL) -> AsyncIterator[Database]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="kzpool_bench_") as tmp:
            db = Database(f"sqlite+aiosqlite:///{tmp}/bench.sqlite3")
            await db.upgrade()
            try:
                yield db
            finally:
                await db.close()
        return
    name = f"kzpool_bench_{secrets.token_hex(4)}"
    admin = Database(pg_admin_url)
    async with admin.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f"CREATE DATABASE {name}"))
    db = Database(str(admin.url.set(database=name).render_as_string(hide_password=False)))
    try:
        await db.upgrade()
        yield db
    finally:
        await db.close()
        async with admin.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.close()
