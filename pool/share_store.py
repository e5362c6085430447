"""Writes share records to the shares table: row conversion (validated before a share is queued,
so a bad record can never poison a batch or the spill file), worker-name resolution and the batch
INSERT that ignores duplicates (replay after a crash or a spill is idempotent)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database
from .models import MICROS_PER_SECOND, Account, Share, Worker

if TYPE_CHECKING:
    from .sharelog import ShareRecord

WorkerKey = tuple[str, str]  # (login, worker name)
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
# Column widths from pool/models.py; checked here because SQLite ignores them and PostgreSQL would
# fail the whole batch (and then every replay of it).
MAX_LOGIN, MAX_WORKER, MAX_JOB_ID, MAX_PEER, MAX_EXTRANONCE_BYTES = 128, 256, 64, 64, 32


@dataclass(frozen=True, slots=True)
class ShareRow:
    """A validated record ready for the shares table, still naming its worker by name."""
    worker: WorkerKey
    values: dict[str, Any]


def _check(ok: bool, field: str, value: object) -> None:
    if not ok:
        raise ValueError(f"share record: invalid {field}: {value!r}")


def share_row(record: ShareRecord) -> ShareRow:
    """Validate and convert; raises ValueError naming the field."""
    _check(0 < len(record.login) <= MAX_LOGIN, "login", record.login)
    _check(0 < len(record.worker) <= MAX_WORKER, "worker", record.worker)
    _check(0 < len(record.job_id) <= MAX_JOB_ID, "job_id", record.job_id)
    _check(len(record.peer) <= MAX_PEER, "peer", record.peer)
    _check(math.isfinite(record.time) and record.time > 0, "time", record.time)
    _check(math.isfinite(record.difficulty) and record.difficulty > 0, "difficulty", record.difficulty)
    _check(0 <= record.height <= INT32_MAX, "height", record.height)
    for name in ("ntime", "nonce", "version"):
        value = getattr(record, name)
        _check(0 <= value <= UINT32_MAX, name, value)
    share_hash = bytes.fromhex(record.share_hash)
    _check(len(share_hash) == 32, "share_hash", record.share_hash)
    extranonce1, extranonce2 = bytes.fromhex(record.extranonce1), bytes.fromhex(record.extranonce2)
    _check(len(extranonce1) <= MAX_EXTRANONCE_BYTES, "extranonce1", record.extranonce1)
    _check(len(extranonce2) <= MAX_EXTRANONCE_BYTES, "extranonce2", record.extranonce2)
    return ShareRow((record.login, record.worker), {
        "time_us": round(record.time * MICROS_PER_SECOND), "worker_id": 0,
        "job_id": record.job_id, "height": record.height, "difficulty": float(record.difficulty),
        "share_hash": share_hash, "is_block": bool(record.is_block),
        "extranonce1": extranonce1, "extranonce2": extranonce2, "ntime": record.ntime,
        "nonce": record.nonce, "version": record.version, "peer": record.peer})


class ShareStore:
    """Inserts batches of ShareRows in one transaction each, on a connection the caller owns."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert_shares = db.insert_ignoring_duplicates(Share.__table__)
        self._insert_accounts = db.insert_ignoring_duplicates(Account.__table__)
        self._insert_workers = db.insert_ignoring_duplicates(Worker.__table__)
        # Filled only after a commit, so a rolled-back transaction never leaves a dangling id.
        self._worker_ids: dict[WorkerKey, int] = {}

    async def write(self, conn: AsyncConnection, rows: Sequence[ShareRow]) -> None:
        """Insert `rows` and commit; shares already stored (same hash and worker) are skipped."""
        worker_ids = self._worker_ids
        missing = {row.worker for row in rows if row.worker not in worker_ids}
        async with conn.begin():
            resolved = await self._resolve_workers(conn, missing) if missing else {}
            params = []
            for row in rows:
                values = dict(row.values)
                values["worker_id"] = worker_ids.get(row.worker) or resolved[row.worker]
                params.append(values)
            await conn.execute(self._insert_shares, params)
        worker_ids.update(resolved)

    async def _resolve_workers(self, conn: AsyncConnection,
                               keys: set[WorkerKey]) -> dict[WorkerKey, int]:
        """Get-or-create accounts and workers. Several pool processes may race to create the same
        worker; ON CONFLICT DO NOTHING plus a re-read settles it on both databases."""
        logins = sorted({login for login, _ in keys})
        await conn.execute(self._insert_accounts, [{"login": login} for login in logins])
        account_ids: dict[str, int] = dict((await conn.execute(
            select(Account.login, Account.id).where(Account.login.in_(logins)))).tuples().all())
        await conn.execute(self._insert_workers, [
            {"account_id": account_ids[login], "name": name} for login, name in sorted(keys)])
        found = await conn.execute(
            select(Account.login, Worker.name, Worker.id)
            .join(Account, Account.id == Worker.account_id)
            .where(Worker.account_id.in_(account_ids.values()),
                   Worker.name.in_({name for _, name in keys})))
        return {(login, name): worker_id for login, name, worker_id in found.tuples()
                if (login, name) in keys}
