"""The share log: accepted shares made durable, in batches, before the miner hears `true`.

A writer task forms batches and commits them (group commit), on PostgreSQL two at a time on two
connections so that the server's work on one batch overlaps the next. When a commit fails, the
log goes into spill mode (pool/spill_mode.py): batches are fsync'd to a spill file and replayed
into the database when it answers again.

Batching: a batch closes at `max_batch` records, at a block candidate, or when its first share
has waited as long as the previous commit took, capped at `max_delay_s`. So a writer spends at
most about half its time committing and commits at most ~1/(2 x commit time) times a second
however the load is spread, while a share waits about one to two commit times (~1 ms on a local
disk) instead of a fixed window; a slow database stretches the window, never past `max_delay_s`.
Under heavy load batches fill up before the window ends.
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
from .share_rows import ShareRow, ShareRowWriter, WorkerKey, peer_text, share_row, spill_row_of
from .spill import SpillFile
from .spill_mode import SpillMode

if TYPE_CHECKING:
    from stratum.interfaces import Account, Peer
    from stratum.jobs import Job, ShareResult, Submission

log = logging.getLogger(__name__)

# Batches committing at once, on separate connections. PostgreSQL inserts in one backend per
# connection, so a second connection overlaps the server's work (measured: ~1.8x the inserts/s
# of one on 2 cores); SQLite has one writer at a time, a second would only wait for the lock.
COMMIT_PIPELINE = {"postgresql": 2, "sqlite": 1}


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
    """The ShareRecord of an accepted share (tools and tests; the server builds its rows directly with
    `share_rows.row_from_share`, which gives the same row)."""
    return ShareRecord(time=time.time(), login=account.login, worker=account.worker, job_id=job_id,
                       height=job.height, difficulty=difficulty, share_hash=result.hash_display,
                       is_block=result.meets_network, extranonce1=sub.extranonce1.hex(),
                       extranonce2=sub.extranonce2.hex(), ntime=sub.ntime, nonce=sub.nonce,
                       version=sub.version, peer=peer_text(peer.host, peer.port))


class ShareLogUnavailable(RuntimeError):
    """Neither the database nor the spill file took the batch: do not acknowledge the share."""


class ShareLogClosed(RuntimeError):
    """append() after close()."""


@dataclass(slots=True)
class _Batch:
    opened_at: float = 0.0  # time.monotonic() of its first record
    rows: list[ShareRow] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)   # one per append call

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
        worker_ids: dict[WorkerKey, int] = {}
        pipeline = COMMIT_PIPELINE.get(db.dialect, 1)
        self._idle_writers: asyncio.Queue[ShareRowWriter] = asyncio.Queue()
        for _ in range(pipeline):
            self._idle_writers.put_nowait(ShareRowWriter(db, commit_timeout_s, worker_ids))
        self._spill = SpillMode(SpillFile(Path(spill_path)),
                                ShareRowWriter(db, commit_timeout_s, worker_ids),
                                lambda row: share_row(ShareRecord(*row)), max_batch,
                                retry_interval_s)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.commit_timeout_s = commit_timeout_s
        self._open = _Batch()
        self._full: deque[_Batch] = deque()
        self._queued = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.last_commit_latency_s = 0.0
        self.commit_latencies: list[float] = []   # drained by the metrics at each scrape (bounded)
        self._commits = 0

    @property
    def queue_depth(self) -> int:
        """Shares appended and not yet durable."""
        return self._queued + self._in_flight

    @property
    def batches_committed(self) -> int:
        """Database commits, replays included."""
        return self._commits + self._spill.commits

    @property
    def spilling(self) -> bool:
        return self._spill.active

    @property
    def spill_bytes(self) -> int:
        return self._spill.spill.size

    async def start(self) -> None:
        """Replay whatever a previous run left in the spill file, then start writing. If the
        database is down, start in spill mode; the replayer keeps trying."""
        await self._spill.open()
        self._writer = asyncio.create_task(self._write_loop(), name="sharelog-writer")
        log.info("event=sharelog_started database=%s spill=%s max_batch=%d max_delay_s=%s "
                 "commit_timeout_s=%s commit_pipeline=%d", self._db.safe_url,
                 self._spill.spill.path, self.max_batch, self.max_delay_s,
                 self.commit_timeout_s, self._idle_writers.qsize())

    async def append(self, record: ShareRecord) -> None:
        """Return once `record` is committed to the database or fsync'd to the spill file.
        Raises ValueError for an invalid record, ShareLogUnavailable if it could not be stored."""
        await self.append_rows([share_row(record)])

    async def append_rows(self, rows: list[ShareRow]) -> None:
        """Return once all `rows` (validated: `share_row`, `row_from_share`) are committed or
        fsync'd to the spill file; ShareLogUnavailable if they could not be stored. One future per
        call, not per row: the server appends an event-loop turn's shares at once."""
        if self._closing or self._writer is None:
            raise ShareLogClosed("share log is closed" if self._closing else "share log not started")
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []
        start, total = 0, len(rows)
        while start < total:
            batch = self._open
            chunk = rows[start:start + self.max_batch - len(batch.rows)]
            start += len(chunk)
            if not batch.rows:
                batch.opened_at = time.monotonic()
                self._wakeup.set()
            batch.rows.extend(chunk)
            waiter = loop.create_future()
            batch.waiters.append(waiter)
            waiters.append(waiter)
            self._queued += len(chunk)
            if len(batch.rows) >= self.max_batch or any(values[5] for _, values in chunk):   # a block candidate
                self._full.append(batch)
                self._open = _Batch()
                self._wakeup.set()  # ends the writer's linger
        if len(waiters) == 1:
            await waiters[0]
        else:
            await asyncio.gather(*waiters)

    async def close(self) -> None:
        """Store everything appended so far (database or spill), then release the files.
        A spill backlog not yet replayed stays in the file for the next start."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        while not self._idle_writers.empty():
            await self._idle_writers.get_nowait().close()
        await self._spill.close()

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
        self._in_flight += len(batch.rows)
        return batch

    async def _write_loop(self) -> None:
        """Take a batch whenever a writer is idle: batches grow while all writers are busy."""
        committing: set[asyncio.Task[None]] = set()
        pipeline = self._idle_writers.qsize()
        while True:
            writer = await self._idle_writers.get()
            batch = await self._next_batch()
            if batch is None:
                self._idle_writers.put_nowait(writer)
                break
            task = asyncio.create_task(self._commit(batch, writer))
            committing.add(task)
            task.add_done_callback(committing.discard)
        await asyncio.gather(*committing)
        assert self._idle_writers.qsize() == pipeline

    async def _commit(self, batch: _Batch, writer: ShareRowWriter) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            error = await self._store(batch, writer)
        except Exception as exc:  # a bug must fail the appends, never leave them waiting
            log.exception("event=store_failed rows=%d", len(batch.rows))
            error = ShareLogUnavailable(f"share log failed: {type(exc).__name__}")
        finally:
            self.last_commit_latency_s = time.perf_counter() - started
            if len(self.commit_latencies) < 10_000:
                self.commit_latencies.append(self.last_commit_latency_s)
            self._in_flight -= len(batch.rows)
            self._idle_writers.put_nowait(writer)
            batch.settle(error)

    async def _store(self, batch: _Batch, writer: ShareRowWriter) -> BaseException | None:
        """Commit the batch to the database, or else fsync it to the spill file."""
        database_failed = False
        while True:
            if not self._spill.active and not database_failed:
                if await writer.write(batch.rows):
                    self._commits += 1
                    return None
                database_failed = True
            spilled = await self._spill.store([spill_row_of(r) for r in batch.rows],
                                              database_failed)
            if spilled is not None:
                return None if spilled else ShareLogUnavailable(
                    "database and spill file both failed")
