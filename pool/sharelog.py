"""The share log: accepted shares made durable, in batches, before the miner hears `true`.

One writer task commits batches (group commit). While the database is unavailable, batches go to
an fsync'd spill file instead and the log stays in spill mode: every later batch goes there too,
so the file keeps the order, and the writer replays it into the database, oldest line first,
whenever the database answers again. Only when the whole file is stored does the log switch back.
Replay is idempotent (UNIQUE (share_hash, worker_id), inserts skip duplicates), so a crash at any
point, including mid-replay, stores each acknowledged share exactly once.

Batching: the writer starts a commit as soon as it is free, so a batch is whatever arrived while
the previous one committed; under light load that is one share and the latency one commit,
under heavy load batches grow towards `max_batch` by themselves. A batch is closed early at
`max_batch` records or at a block candidate.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database
from .share_rows import ShareRow, ShareRowWriter, share_row
from .spill import SpillFile, encode_line

if TYPE_CHECKING:
    from stratum.interfaces import Account, Peer
    from stratum.jobs import Job, ShareResult, Submission

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShareRecord:
    time: float          # unix seconds, UTC, when the share was accepted
    login: str           # account
    worker: str          # full worker name the miner sent
    job_id: str
    height: int
    difficulty: float    # the share target difficulty it was accepted at
    share_hash: str      # display hex (big-endian)
    is_block: bool       # met the network target
    extranonce1: str     # hex
    extranonce2: str     # hex
    ntime: int
    nonce: int
    version: int
    peer: str            # "host:port" of the miner's connection

    def spill_row(self) -> list[Any]:
        return [self.time, self.login, self.worker, self.job_id, self.height, self.difficulty,
                self.share_hash, self.is_block, self.extranonce1, self.extranonce2, self.ntime,
                self.nonce, self.version, self.peer]


def record_from_share(account: Account, peer: Peer, job_id: str, job: Job, sub: Submission,
                      difficulty: float, result: ShareResult) -> ShareRecord:
    """The ShareRecord of an accepted share (the `record_factory` of pool.shares.PoolShareSink)."""
    return ShareRecord(time=time.time(), login=account.login, worker=account.worker, job_id=job_id,
                       height=job.height, difficulty=difficulty, share_hash=result.hash_display,
                       is_block=result.meets_network, extranonce1=sub.extranonce1.hex(),
                       extranonce2=sub.extranonce2.hex(), ntime=sub.ntime, nonce=sub.nonce,
                       version=sub.version, peer=f"{peer.host}:{peer.port}")


class ShareLogUnavailable(RuntimeError):
    """Neither the database nor the spill file took the batch: do not acknowledge the share."""


class ShareLogClosed(RuntimeError):
    """append() after close()."""


@dataclass(slots=True)
class _Batch:
    records: list[ShareRecord] = field(default_factory=list)
    rows: list[ShareRow] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def settle(self, error: BaseException | None) -> None:
        for waiter in self.waiters:
            if not waiter.done():  # its append() may have been cancelled
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)


class ShareLog:
    def __init__(self, db: Database, spill_path: Path, max_batch: int = 2000,
                 max_delay_s: float = 0.05, *, commit_timeout_s: float = 5.0,
                 retry_interval_s: float = 1.0) -> None:
        self._db = db
        self._store = ShareRowWriter(db)
        self._spill = SpillFile(Path(spill_path))
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        # A commit hanging longer than this (network partition, lock) counts as an outage.
        self.commit_timeout_s = commit_timeout_s
        # How often the writer knocks on a database that is down.
        self.retry_interval_s = retry_interval_s
        self._open = _Batch()
        self._full: deque[_Batch] = deque()
        self._queued = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._closing = False
        self._spilling = False
        self._replay_offset = 0
        self._retry_at = 0.0
        self.last_commit_latency_s = 0.0
        self.batches_committed = 0  # database commits, replays included

    @property
    def queue_depth(self) -> int:
        """Shares appended and not yet durable."""
        return self._queued + self._in_flight

    @property
    def spilling(self) -> bool:
        return self._spilling

    @property
    def spill_bytes(self) -> int:
        return self._spill.size

    async def start(self) -> None:
        """Open the spill file and replay whatever a previous run left in it, then start writing.
        If the database is down, the log starts in spill mode and replays later."""
        self._spill.open()
        if self._spill.size:
            self._spilling = True
            log.warning("event=spill_found path=%s bytes=%d", self._spill.path, self._spill.size)
            while self._spilling and await self._replay_step():
                pass
        self._writer = asyncio.create_task(self._run(), name="sharelog-writer")

    async def append(self, record: ShareRecord) -> None:
        """Return once `record` is committed to the database or fsync'd to the spill file.
        Raises ValueError for an invalid record, ShareLogUnavailable if it could not be stored."""
        if self._closing or self._writer is None:
            raise ShareLogClosed("share log is closed" if self._closing else "share log not started")
        row = share_row(record)
        waiter = asyncio.get_running_loop().create_future()
        batch = self._open
        batch.rows.append(row)
        batch.records.append(record)
        batch.waiters.append(waiter)
        self._queued += 1
        if len(batch.rows) >= self.max_batch or record.is_block:
            self._full.append(batch)
            self._open = _Batch()
        self._wakeup.set()
        await waiter

    async def close(self) -> None:
        """Store everything appended so far (database or spill), then release the files."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        await self._drop_connection()
        self._spill.close()

    def _take_batch(self) -> _Batch | None:
        if self._full:
            batch = self._full.popleft()
        elif self._open.rows:
            batch, self._open = self._open, _Batch()
        else:
            return None
        self._queued -= len(batch.rows)
        self._in_flight = len(batch.rows)
        return batch

    async def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is not None:
                await self._persist(batch)
                self._in_flight = 0
            if self._spilling and not self._closing and time.monotonic() >= self._retry_at:
                await self._replay_step()
            elif batch is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        if not self._spilling:
            await self._wakeup.wait()
            return
        try:  # in spill mode, also wake up to retry the database
            await asyncio.wait_for(self._wakeup.wait(), max(0.0, self._retry_at - time.monotonic()))
        except TimeoutError:
            pass

    async def _persist(self, batch: _Batch) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        if not self._spilling and await self._write_db(batch.rows):
            pass
        elif await self._write_spill(batch.records):
            self._enter_spill_mode()
        elif await self._write_db(batch.rows):
            # The spill disk failed but the database answered: out of order, still stored once.
            log.error("event=spill_bypassed rows=%d", len(batch.rows))
        else:
            error = ShareLogUnavailable("database and spill file both failed")
        self.last_commit_latency_s = time.perf_counter() - started
        batch.settle(error)

    def _enter_spill_mode(self) -> None:
        if not self._spilling:
            self._spilling = True
            self._retry_at = time.monotonic() + self.retry_interval_s
            log.warning("event=spill_mode_on path=%s", self._spill.path)

    async def _write_db(self, rows: list[ShareRow]) -> bool:
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                if self._conn is None:
                    self._conn = await self._db.engine.connect()
                await self._store.write(self._conn, rows)
            self.batches_committed += 1
            return True
        except Exception as exc:  # any failure to store is an outage: spill, never drop
            log.warning("event=db_write_failed rows=%d error=%s detail=%s", len(rows),
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            await self._drop_connection()
            return False

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with asyncio.timeout(1.0):
                await conn.invalidate()
                await conn.close()
        except Exception:  # a dead connection may fail to close; it is discarded either way
            pass

    async def _write_spill(self, records: list[ShareRecord]) -> bool:
        try:
            line = encode_line([record.spill_row() for record in records])
            await asyncio.to_thread(self._spill.append, line)
            return True
        except OSError as exc:
            log.error("event=spill_write_failed path=%s error=%s", self._spill.path, exc)
            return False

    async def _replay_step(self) -> bool:
        """Move the next lines of the spill file to the database. False if the database failed."""
        spill_rows, next_offset = self._spill.read(self._replay_offset, self.max_batch)
        if spill_rows:
            rows = [share_row(ShareRecord(*spill_row)) for spill_row in spill_rows]
            if not await self._write_db(rows):
                self._retry_at = time.monotonic() + self.retry_interval_s
                return False
            self._replay_offset = next_offset
        if self._replay_offset >= self._spill.size:
            self._spill.clear()
            self._replay_offset = 0
            self._spilling = False
            log.warning("event=spill_mode_off path=%s", self._spill.path)
        return True
