"""One payout run at a time, across processes, without holding a database write lock while the
wallet is asked (that would stop the share log on SQLite).

PostgreSQL: a session advisory lock on a connection held for the run (released by the server if
the process dies). SQLite: an exclusive flock on `<database file>.payout-lock` (released by the
kernel if the process dies). A second run finds the lock taken and stops at once.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pool.db import Database

RUN_LOCK_KEY = 0x6B7A_706F_6F6C_5052      # "kzpoolPR"


class RunLocked(RuntimeError):
    """Another payout run holds the lock."""


@asynccontextmanager
async def payout_run_lock(db: Database) -> AsyncIterator[None]:
    if db.dialect == "postgresql":
        async with db.engine.connect() as conn:
            got = (await conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({RUN_LOCK_KEY})")).scalar()
            await conn.commit()
            if not got:
                raise RunLocked("another payout run is in progress (PostgreSQL advisory lock held)")
            try:
                yield
            finally:
                await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({RUN_LOCK_KEY})")
                await conn.commit()
        return
    path = db.url.database or ""
    if not path or path == ":memory:" or path.startswith("file:"):
        yield                                 # a private in-memory database: no other process
        return
    fd = os.open(f"{path}.payout-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another payout run is in progress ({path}.payout-lock is locked)") from None
        yield
    finally:
        os.close(fd)
