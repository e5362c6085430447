"""The share log: accepted shares made durable, in batches, before the miner hears `true`.

A writer task commits batches (group commit). When a commit fails, that batch and every later one
go to an fsync'd spill file instead (spill mode), so the file keeps their order, and a replayer
task moves the file into the database, oldest line first, whenever the database answers again;
only when the whole file is stored does the log switch back. The replayer runs beside the writer,
so probing a database that is down never delays an acknowledgement. Replay is idempotent
(UNIQUE (share_hash, worker_id), inserts skip duplicates), so a crash at any point, mid-replay
included, leaves each acknowledged share stored exactly once.

Batching (group commit): a batch closes at `max_batch` records, at a block candidate, or when its
first share has waited as long as the previous commit took, capped at `max_delay_s`. So the
writer spends at most about half its time committing and commits at most ~1/(2 x commit time)
times a second however the load is spread, while a share waits about one to two commit times
(~1 ms on a local disk) instead of a fixed window; a slow database stretches the window, never
past `max_delay_s`. Under heavy load batches fill up before the window ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .db import Database
from .share_rows import ShareRow, ShareRowWriter, share_row
from .spill import SpillFile, encode_line

if TYPE_CHECKING:
    from stratum.interfaces import Account, Peer
    from stratum.jobs import Job, ShareResult, Submission

log = logging.getLogger(__name__)

# SQLite: how often the WAL is copied back into the database file, off the commit path. At 50,000
# shares/s a second of WAL is ~20 MB, which a passive checkpoint absorbs without stalling commits.
CHECKPOINT_INTERVAL_S = 1.0


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
    opened_at: float = 0.0  # time.monotonic() of its first record
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
    """Durable, batched share storage. `start()` once, `append()` per accepted share (its return
    means durable), `close()` at shutdown. One spill file per pool process.

    max_batch: most shares in one commit. max_delay_s: longest a share waits for its batch to fill
    (see the module docstring). commit_timeout_s: a commit hanging longer counts as an outage and
    its batch is spilled. retry_interval_s: how often the replayer knocks on a database that is
    down. Metrics: queue_depth, last_commit_latency_s, batches_committed, spilling, spill_bytes.
    """

    def __init__(self, db: Database, spill_path: Path, max_batch: int = 2000,
                 max_delay_s: float = 0.05, *, commit_timeout_s: float = 5.0,
                 retry_interval_s: float = 1.0) -> None:
        self._db = db
        self._rows = ShareRowWriter(db, commit_timeout_s)
        self._spill = SpillFile(Path(spill_path))
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.retry_interval_s = retry_interval_s
        self._open = _Batch()
        self._full: deque[_Batch] = deque()
        self._queued = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        # Held while appending to, or emptying, the spill file and while switching modes.
        self._spill_lock = asyncio.Lock()
        self._closing = False
        self._spilling = False
        self._replay_offset = 0
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
        If the database is down, start in spill mode; the replayer keeps trying."""
        self._spill.open()
        if self._spill.size:
            self._spilling = True
            log.warning("event=spill_found path=%s bytes=%d", self._spill.path, self._spill.size)
            while self._spilling and await self._replay_step():
                pass
            if self._spilling:
                self._start_replayer()
        self._writer = asyncio.create_task(self._write_loop(), name="sharelog-writer")
        if self._db.dialect == "sqlite":
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(),
                                                     name="sharelog-checkpointer")
        log.info("event=sharelog_started database=%s spill=%s max_batch=%d max_delay_s=%s "
                 "commit_timeout_s=%s", self._db.safe_url, self._spill.path, self.max_batch,
                 self.max_delay_s, self._rows.commit_timeout_s)

    async def append(self, record: ShareRecord) -> None:
        """Return once `record` is committed to the database or fsync'd to the spill file.
        Raises ValueError for an invalid record, ShareLogUnavailable if it could not be stored."""
        if self._closing or self._writer is None:
            raise ShareLogClosed("share log is closed" if self._closing else "share log not started")
        row = share_row(record)
        waiter = asyncio.get_running_loop().create_future()
        batch = self._open
        batch.records.append(record)
        batch.rows.append(row)
        batch.waiters.append(waiter)
        self._queued += 1
        if len(batch.rows) == 1:
            batch.opened_at = time.monotonic()
            self._wakeup.set()
        if len(batch.rows) >= self.max_batch or record.is_block:
            self._full.append(batch)
            self._open = _Batch()
            self._wakeup.set()  # ends the writer's linger
        await waiter

    async def close(self) -> None:
        """Store everything appended so far (database or spill), then release the files.
        A spill backlog not yet replayed stays in the file for the next start."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        for task in (self._replayer, self._checkpointer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._rows.close()
        self._spill.close()

    async def _next_batch(self) -> _Batch | None:
        """The next batch to store, once it is full or its window has passed; None when closed."""
        while not self._full:
            linger = min(self.max_delay_s, self.last_commit_latency_s)
            wait = self._open.opened_at + linger - time.monotonic()
            if self._open.rows and (wait <= 0 or self._closing):
                batch, self._open = self._open, _Batch()
                break
            if self._closing:
                return None
            self._wakeup.clear()
            if self._open.rows:  # linger: woken early only by a full batch or close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
            else:
                await self._wakeup.wait()
        else:
            batch = self._full.popleft()
        self._queued -= len(batch.rows)
        self._in_flight = len(batch.rows)
        return batch

    async def _write_loop(self) -> None:
        while (batch := await self._next_batch()) is not None:
            started = time.perf_counter()
            error = await self._store(batch)
            self.last_commit_latency_s = time.perf_counter() - started
            self._in_flight = 0
            batch.settle(error)

    async def _store(self, batch: _Batch) -> BaseException | None:
        """Commit the batch to the database, or else fsync it to the spill file."""
        db_failed = False
        while True:
            if not self._spilling and not db_failed:
                if await self._rows.write(batch.rows):
                    self.batches_committed += 1
                    return None
                db_failed = True
            async with self._spill_lock:
                if self._spilling or db_failed:
                    if not await self._write_spill(batch.records):
                        return ShareLogUnavailable("database and spill file both failed")
                    if not self._spilling:
                        self._spilling = True
                        log.warning("event=spill_mode_on path=%s", self._spill.path)
                        self._start_replayer()
                    return None
            # The replayer caught up while this batch waited for the lock: the database is back.

    async def _write_spill(self, records: list[ShareRecord]) -> bool:
        try:
            line = encode_line([record.spill_row() for record in records])
            await asyncio.to_thread(self._spill.append, line)
            return True
        except OSError as exc:
            log.error("event=spill_write_failed path=%s error=%s", self._spill.path, exc)
            return False

    def _start_replayer(self) -> None:
        if not self._closing and (self._replayer is None or self._replayer.done()):
            self._replayer = asyncio.create_task(self._replay_loop(), name="sharelog-replayer")

    async def _replay_loop(self) -> None:
        while self._spilling:
            await asyncio.sleep(self.retry_interval_s)
            while self._spilling and await self._replay_step():
                pass

    async def _replay_step(self) -> bool:
        """Move the next lines of the spill file to the database; False if the database failed.
        Switches spill mode off once the whole file is stored."""
        spill_rows, next_offset = self._spill.read(self._replay_offset, self.max_batch)
        if spill_rows:
            rows = [share_row(ShareRecord(*spill_row)) for spill_row in spill_rows]
            if not await self._rows.write(rows):
                return False
            self.batches_committed += 1
            self._replay_offset = next_offset
        async with self._spill_lock:
            if self._replay_offset >= self._spill.size:
                self._spill.clear()
                self._replay_offset = 0
                self._spilling = False
                log.warning("event=spill_mode_off path=%s", self._spill.path)
        return True

    async def _checkpoint_loop(self) -> None:
        committed = 0
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            if self.batches_committed != committed:
                committed = self.batches_committed
                try:
                    await self._db.checkpoint()
                except Exception as exc:  # e.g. locked by a long writer: the next round retries
                    log.info("event=checkpoint_skipped error=%s", type(exc).__name__)
