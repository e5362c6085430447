"""Work that must run on one pool node at a time (payout runs, compaction, reports).

On PostgreSQL, the shared state of several pool machines, a session-level advisory lock held on a
dedicated connection: if the holder's process or machine dies, PostgreSQL drops its session and the
lock with it, so no lock is ever left behind. On SQLite (one machine by definition) an exclusive
`flock` on a file beside the database does the same across processes.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from .db import Database


class SingletonBusy(RuntimeError):
    """Another node is doing this work now."""


def lock_key(name: str) -> int:
    # pg advisory locks take a signed 64-bit key; derive a stable one from the work's name.
    return int.from_bytes(hashlib.sha256(f"kzpool:{name}".encode()).digest()[:8], "big", signed=True)


@asynccontextmanager
async def singleton(db: Database, name: str, busy: type[SingletonBusy] = SingletonBusy) -> AsyncIterator[None]:
    """Holds the lock named `name` for the body; raises `busy` at once if another holder has it."""
    if db.dialect == "postgresql":
        key = lock_key(name)
        async with db.engine.connect() as conn:
            got = (await conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})")).scalar()
            await conn.commit()       # a session lock outlives the transaction; don't hold one open
            if not got:
                raise busy(f"'{name}' is running on another node (PostgreSQL advisory lock held)")
            try:
                yield
            finally:
                await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                await conn.commit()
        return
    path = db.url.database or ""
    if not path or path == ":memory:" or path.startswith("file:"):
        yield                         # a private in-memory database: no other process can see it
        return
    fd = os.open(f"{path}.{name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(f"'{name}' is running in another process ({path}.{name}.lock is locked)") from None
        yield
    finally:
        os.close(fd)
