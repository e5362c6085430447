"""Writes share records to the shares table: row conversion (validated before a share is queued,
so a bad record can never poison a batch or the spill file), worker-name resolution and the batch
INSERT that ignores duplicates (replay after a crash or a spill is idempotent)."""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database
from .models import MICROS_PER_SECOND, Account, Worker

if TYPE_CHECKING:
    from stratum.interfaces import AcceptedShare

    from .sharelog import ShareRecord

log = logging.getLogger(__name__)

WorkerKey = tuple[str, str]  # (login, worker name)
SQLITE_WRITER_CACHE_KIB = 256 * 1024  # page cache of the share writer's connection
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
# Column widths from pool/models.py; checked here because SQLite ignores them and PostgreSQL would
# fail the whole batch (and then every replay of it).
MAX_LOGIN, MAX_WORKER, MAX_JOB_ID, MAX_PEER, MAX_EXTRANONCE_BYTES = 128, 256, 64, 64, 32


# A validated record ready for the shares table: its worker still by name, then the column values
# in SHARE_COLUMNS order after worker_id. A plain tuple, not a dataclass: it is built once per share
# on the hot path, where a frozen dataclass costs a microsecond more.
ShareRow = tuple[WorkerKey, tuple[Any, ...]]
SHARE_COLUMNS = ("worker_id", "time_us", "job_id", "height", "difficulty", "share_hash", "is_block",
                 "extranonce1", "extranonce2", "ntime", "nonce", "version", "peer")
_PG_ARRAY_TYPES = ("integer", "bigint", "text", "integer", "float8", "bytea", "boolean", "bytea",
                   "bytea", "bigint", "bigint", "bigint", "text")
_COLUMN_LIST = ", ".join(SHARE_COLUMNS)
SQLITE_INSERT = (f"INSERT INTO shares ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(SHARE_COLUMNS))}) "
                 "ON CONFLICT DO NOTHING")
# One statement per batch: the rows travel as one array per column and the server unnests them,
# several times faster than a multi-row VALUES or an executemany round trip per row.
POSTGRES_INSERT = (f"INSERT INTO shares ({_COLUMN_LIST}) SELECT * FROM unnest("
                   + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_PG_ARRAY_TYPES, 1))
                   + ") ON CONFLICT DO NOTHING")


def share_row(record: ShareRecord) -> ShareRow:
    """Validate and convert; raises ValueError naming the record. Checks are one expression and
    the first failing field is found only on failure: this runs for every share."""
    share_hash = bytes.fromhex(record.share_hash)
    extranonce1, extranonce2 = bytes.fromhex(record.extranonce1), bytes.fromhex(record.extranonce2)
    time_s, difficulty = float(record.time), float(record.difficulty)
    if not (0 < len(record.login) <= MAX_LOGIN and 0 < len(record.worker) <= MAX_WORKER
            and 0 < len(record.job_id) <= MAX_JOB_ID and len(record.peer) <= MAX_PEER
            and 0 < time_s < math.inf and 0 < difficulty < math.inf
            and 0 <= record.height <= INT32_MAX and 0 <= record.ntime <= UINT32_MAX
            and 0 <= record.nonce <= UINT32_MAX and 0 <= record.version <= UINT32_MAX
            and len(share_hash) == 32 and len(extranonce1) <= MAX_EXTRANONCE_BYTES
            and len(extranonce2) <= MAX_EXTRANONCE_BYTES):
        raise ValueError(f"share record: {_first_invalid_field(record)} out of range: {record!r}")
    return (record.login, record.worker), (
        round(time_s * MICROS_PER_SECOND), record.job_id, record.height, difficulty, share_hash,
        bool(record.is_block), extranonce1, extranonce2, record.ntime, record.nonce, record.version,
        record.peer)


def peer_text(host: str, port: int) -> str:
    """host:port, with IPv6 hosts in brackets so the port stays unambiguous."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def row_from_share(share: AcceptedShare, time_us: int) -> ShareRow:
    """The row of an accepted share, built straight from the Stratum objects (no hex round trip):
    equal to `share_row(record_from_share(...))` for the same time. Values the Stratum layer has
    already bounded (header fields from 4-byte hex, the job from the book) are not checked again."""
    account, peer, job_id, job, sub, difficulty, result = share
    login, worker = account.login, account.worker
    peer_str = peer_text(peer.host, peer.port)
    extranonce1, extranonce2 = sub.extranonce1, sub.extranonce2
    if not (0 < len(login) <= MAX_LOGIN and 0 < len(worker) <= MAX_WORKER and 0 < len(job_id) <= MAX_JOB_ID
            and len(peer_str) <= MAX_PEER and 0 < difficulty < math.inf
            and len(extranonce1) <= MAX_EXTRANONCE_BYTES and len(extranonce2) <= MAX_EXTRANONCE_BYTES
            and 0 <= job.height <= INT32_MAX):
        from .sharelog import record_from_share     # the slow path names the field
        share_row(record_from_share(account, peer, job_id, job, sub, difficulty, result))
        raise ValueError(f"share record out of range: worker={worker!r}")
    return (login, worker), (time_us, job_id, job.height, float(difficulty), result.hash[::-1],
                             result.meets_network, extranonce1, extranonce2, sub.ntime, sub.nonce,
                             sub.version, peer_str)


def spill_row_of(row: ShareRow) -> list[Any]:
    """The spill file's form of a row: the ShareRecord fields (`ShareRecord.spill_row`)."""
    (login, worker), (time_us, job_id, height, difficulty, share_hash, is_block, extranonce1, extranonce2,
                      ntime, nonce, version, peer) = row
    return [time_us / MICROS_PER_SECOND, login, worker, job_id, height, difficulty, share_hash.hex(),
            is_block, extranonce1.hex(), extranonce2.hex(), ntime, nonce, version, peer]


def _first_invalid_field(record: ShareRecord) -> str:
    limits = {"login": MAX_LOGIN, "worker": MAX_WORKER, "job_id": MAX_JOB_ID}
    for name, limit in limits.items():
        if not 0 < len(getattr(record, name)) <= limit:
            return name
    if len(record.peer) > MAX_PEER:
        return "peer"
    for name in ("time", "difficulty"):
        if not 0 < float(getattr(record, name)) < math.inf:
            return name
    if not 0 <= record.height <= INT32_MAX:
        return "height"
    for name in ("ntime", "nonce", "version"):
        if not 0 <= getattr(record, name) <= UINT32_MAX:
            return name
    return "share_hash" if len(bytes.fromhex(record.share_hash)) != 32 else "extranonce"


class ShareRowWriter:
    """Inserts batches of ShareRows, one transaction each, on a connection of its own.
    The batch INSERT goes straight to the driver (sqlite3 executemany, asyncpg unnest): SQLAlchemy's
    per-row parameter processing alone would cost more than the whole insert.
    Not for concurrent use: one batch at a time."""

    def __init__(self, db: Database, commit_timeout_s: float,
                 worker_ids: dict[WorkerKey, int] | None = None) -> None:
        self._db = db
        self.commit_timeout_s = commit_timeout_s
        self._conn: AsyncConnection | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._insert_accounts = db.insert_ignoring_duplicates(Account)
        self._insert_workers = db.insert_ignoring_duplicates(Worker)
        # Filled only after a commit, so a rolled-back transaction never leaves a dangling id;
        # writers of one share log share it.
        self._worker_ids: dict[WorkerKey, int] = {} if worker_ids is None else worker_ids

    async def write(self, rows: Sequence[ShareRow]) -> bool:
        """Insert and commit `rows`; True once committed. Any failure (refused, lost connection,
        locked file, a commit hanging past commit_timeout_s) is logged and returns False: the
        caller spills, and the connection is replaced on the next try. A batch that failed may
        still have committed; replaying it is harmless, duplicates are skipped."""
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                if self._conn is None:
                    self._conn = await self._connect()
                await self._insert(self._conn, rows)
            return True
        except Exception as exc:  # every failure means "not stored": the caller must spill
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("event=db_write_failed rows=%d error=%s detail=%r", len(rows),
                        type(exc).__name__, first_line[:200])
            self._discard_connection()
            return False

    async def _connect(self) -> AsyncConnection:
        conn = await self._db.engine.connect()
        if self._db.dialect == "sqlite":
            # Inserts append at the end of the time-first key, but payout windows and exports
            # read back recent shares: a cache of them keeps those reads off the disk.
            await conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_WRITER_CACHE_KIB}")
            await conn.commit()  # ends SQLAlchemy's autobegun transaction; the PRAGMA stays set
        return conn

    def _discard_connection(self) -> None:
        """Drop the connection without waiting: a connection stuck in a hung statement (SQLite's
        thread in a busy wait, a half-open socket) must not hold up the spill path."""
        conn, self._conn = self._conn, None
        if conn is not None:
            task = asyncio.create_task(self._close_quietly(conn, invalidate=True))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(conn: AsyncConnection, invalidate: bool) -> None:
        try:
            async with asyncio.timeout(30.0):
                if invalidate:
                    await conn.invalidate()  # after a failure its state is unknown: never reuse
                await conn.close()
        except Exception:  # a dead connection may fail to close; it is discarded either way
            pass

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._db.dialect == "sqlite":  # back to the default before it returns to the pool
                await conn.exec_driver_sql("PRAGMA cache_size=-2000")
                await conn.commit()
            await self._close_quietly(conn, invalidate=False)
        if self._closing:
            await asyncio.wait(self._closing, timeout=1.0)

    async def _insert(self, conn: AsyncConnection, rows: Sequence[ShareRow]) -> None:
        """Shares already stored (same hash and worker) are skipped. New workers are committed
        first, on their own: a worker row without shares is harmless."""
        worker_ids = self._worker_ids
        missing = {key for key, _ in rows if key not in worker_ids}
        if missing:
            async with conn.begin():
                resolved = await self._resolve_workers(conn, missing)
            worker_ids.update(resolved)
        params = [(worker_ids[key], *values) for key, values in rows]
        driver: Any = (await conn.get_raw_connection()).driver_connection  # aiosqlite / asyncpg
        if self._db.dialect == "sqlite":
            # On failure write() discards the connection, which rolls back; no rollback here,
            # since it would queue behind a statement stuck in SQLite's busy wait.
            await driver.executemany(SQLITE_INSERT, params)
            await driver.commit()
        else:
            # A single statement is its own transaction: one round trip per batch.
            await driver.execute(POSTGRES_INSERT, *zip(*params))

    async def _resolve_workers(self, conn: AsyncConnection,
                               keys: set[WorkerKey]) -> dict[WorkerKey, int]:
        """Get-or-create accounts and workers. Several pool processes may race to create the same
        worker; ON CONFLICT DO NOTHING plus a re-read settles it on both databases."""
        logins = sorted({login for login, _ in keys})
        await conn.execute(self._insert_accounts, [{"login": login} for login in logins])
        account_ids: dict[str, int] = dict((await conn.execute(
            select(Account.login, Account.id).where(Account.login.in_(logins)))).all())
        await conn.execute(self._insert_workers, [
            {"account_id": account_ids[login], "name": name} for login, name in sorted(keys)])
        found = await conn.execute(
            select(Account.login, Worker.name, Worker.id)
            .join(Account, Account.id == Worker.account_id)
            .where(Worker.account_id.in_(account_ids.values()),
                   Worker.name.in_({name for _, name in keys})))
        return {(login, name): worker_id for login, name, worker_id in found
                if (login, name) in keys}
