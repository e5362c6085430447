"""One payout run at a time, across processes and pool nodes, without holding a database write lock
while the wallet is asked (that would stop the share log on SQLite): the `payout-run` singleton
(pool/singleton.py: PostgreSQL advisory lock, or flock beside the SQLite file). A second run finds
the lock taken and stops at once."""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from pool.db import Database
from pool.singleton import SingletonBusy, singleton


class RunLocked(SingletonBusy):
    """Another payout run holds the lock."""


def payout_run_lock(db: Database) -> AbstractAsyncContextManager[None]:
    return singleton(db, "payout-run", busy=RunLocked)
