"""AuditLog: the pool's tamper-evident record of what it decided, written off the hot path.

`record(kind, payload)` only encodes the payload and queues it; it never awaits and never touches
the database, so share processing and authorization never wait for the audit log. One writer task
appends the queue in batches (group commit: at most one transaction per `commit_interval_s`), each
one transaction that extends the chain from the committed head (compliance/audit_store.py), so a
crash loses at most the records still queued and never breaks the chain. A checkpoint signs the
head every `checkpoint_every` records and, while records are unsigned, at least every
`checkpoint_interval_s`; `close()` signs whatever is left.

If the database is unreachable the writer retries and the queue grows up to `max_queue`; past
that, records are counted and dropped (blocking the pool would be worse), and the first batch
that commits afterwards starts with an `audit_gap` record saying how many were lost and when.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from pool.db import Database

from .audit_chain import (CHECKPOINT_KIND, GENESIS, MAX_KIND_LENGTH, anchor_tag, canonical_json,
                          format_time, normalise_payload)
from .audit_keys import SigningKey
from .audit_store import AuditStore, ChainState, PendingRecord

log = logging.getLogger("kzpool.audit")

AUDIT_GAP_KIND = "audit_gap"
MICROS = 1_000_000


class AuditLog:
    def __init__(self, db: Database, signer: SigningKey, *, checkpoint_every: int = 100,
                 checkpoint_interval_s: float = 60.0, max_batch: int = 250,
                 commit_interval_s: float = 0.05, max_queue: int = 250_000,
                 commit_timeout_s: float = 5.0,
                 retry_interval_s: float = 1.0, close_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        if checkpoint_every < 1 or checkpoint_interval_s <= 0 or max_batch < 1:
            raise ValueError("audit: checkpoint_every and max_batch must be >= 1, "
                             "checkpoint_interval_s > 0")
        self._db = db
        self._store = AuditStore(db)
        self._signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.max_batch = max_batch
        # Group commit: at most one audit transaction per interval, even when batches are full,
        # so the audit writer takes the database's write lock (all of SQLite, the share log's
        # too) a few times a second, never continuously: max_batch / commit_interval_s is the
        # most it appends per second; a flood beyond that queues, then drops (audit_gap).
        self.commit_interval_s = commit_interval_s
        # Memory bound while the database is away: a few hundred bytes a record.
        self.max_queue = max_queue
        self.commit_timeout_s = commit_timeout_s
        self.retry_interval_s = retry_interval_s
        self.close_timeout_s = close_timeout_s
        self._clock = clock
        self._queue: deque[PendingRecord] = deque()
        self._wakeup = asyncio.Event()
        self._close_requested = asyncio.Event()
        self._next_commit_at = 0.0
        self._progress = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._state = ChainState(GENESIS, checkpoint_seq=0, checkpoint_time_us=0, appended=0)
        self._anchor = b""
        self._dropped = 0
        self._dropped_first_us = 0
        self.enqueued_total = 0
        self.committed_total = 0      # records from record(), gap and checkpoints not counted
        self.dropped_total = 0
        self.commits_total = 0        # transactions: what the database's write lock sees
        self.last_commit_latency_s = 0.0

    # -- the pool's side: never blocks ------------------------------------------------------

    def record(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Queue one record. Raises TypeError/ValueError for a payload that cannot be recorded
        (a programming error, reported at the call site); never waits for the database."""
        if not kind or len(kind) > MAX_KIND_LENGTH or kind == CHECKPOINT_KIND:
            raise ValueError(f"audit record kind {kind!r} is empty, too long or reserved")
        payload_json = canonical_json(normalise_payload(dict(payload)))
        now_us = round(self._clock() * MICROS)
        if self._closing or len(self._queue) >= self.max_queue:
            if not self._dropped:
                self._dropped_first_us = now_us
                log.error("event=audit_record_dropped kind=%s reason=%s queued=%d", kind,
                          "closed" if self._closing else "queue_full", len(self._queue))
            self._dropped += 1
            self.dropped_total += 1
            return
        self._queue.append(PendingRecord(now_us, kind, payload_json))
        self.enqueued_total += 1
        self._wakeup.set()

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the newest record this process knows is committed; (0, zeros) before
        the first."""
        head = self._state.head
        return head.seq, bytes.fromhex(head.hash)

    def anchor_push(self) -> bytes:
        """The coinbase tag for JobFeed.extra_push: b"kza" + seq (4 bytes) + 9 bytes of hash."""
        return self._anchor

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the committed head (so the first job already anchors it) and start the writer."""
        self._set_state(await self._store.read_state())
        log.info("event=audit_start seq=%d checkpoint_seq=%d key_id=%s checkpoint_every=%d "
                 "checkpoint_interval_s=%s", self._state.head.seq, self._state.checkpoint_seq,
                 self._signer.key_id, self.checkpoint_every, self.checkpoint_interval_s)
        self._writer = asyncio.create_task(self._run(), name="audit-writer")

    async def flush(self) -> None:
        """Wait until every record queued before this call is committed."""
        target = self.enqueued_total
        while self.committed_total < target:
            self._progress.clear()
            if self._writer is None or self._writer.done():
                raise RuntimeError("audit writer is not running")
            await self._progress.wait()

    async def close(self) -> None:
        """Commit the queue and a final checkpoint; gives up after `close_timeout_s`."""
        self._closing = True
        self._wakeup.set()
        self._close_requested.set()
        if self._writer is None:
            return
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await asyncio.shield(self._writer)
        except TimeoutError:
            self._writer.cancel()
            log.error("event=audit_close_timeout lost=%d", len(self._queue))
        log.info("event=audit_stop seq=%d written=%d dropped=%d", self._state.head.seq,
                 self.committed_total, self.dropped_total)

    # -- the writer -------------------------------------------------------------------------

    def _set_state(self, state: ChainState) -> None:
        self._state = state
        self._anchor = anchor_tag(state.head)

    def _checkpoint_due_in(self) -> float | None:
        if self._state.unsigned == 0:
            return None
        due_us = self._state.checkpoint_time_us + self.checkpoint_interval_s * MICROS
        return max(0.0, (due_us - self._clock() * MICROS) / MICROS)

    async def _run(self) -> None:
        while True:
            if not self._queue and not self._closing:
                self._wakeup.clear()
                due_in = self._checkpoint_due_in()
                try:
                    async with asyncio.timeout(due_in):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
            if self._closing and not self._queue:
                if self._state.unsigned == 0 or await self._commit([], sign_head=True):
                    return
                continue
            await self._gather_batch()
            batch = list(islice(self._queue, self.max_batch))
            checkpoint_due = self._checkpoint_due_in() == 0.0
            if batch or checkpoint_due:
                await self._commit(batch, sign_head=checkpoint_due)
                self._next_commit_at = time.monotonic() + self.commit_interval_s

    async def _gather_batch(self) -> None:
        """Let records gather until the commit interval has passed or close() is called."""
        pause = self._next_commit_at - time.monotonic()
        if pause <= 0 or self._closing:
            return
        try:
            async with asyncio.timeout(pause):
                await self._close_requested.wait()
        except TimeoutError:
            pass

    async def _commit(self, batch: list[PendingRecord], *, sign_head: bool) -> bool:
        now_us = round(self._clock() * MICROS)
        dropped = self._dropped
        pending = batch
        if dropped:
            gap = {"dropped": dropped, "first_dropped_at": format_time(self._dropped_first_us),
                   "last_known_seq": self._state.head.seq}
            pending = [PendingRecord(now_us, AUDIT_GAP_KIND, canonical_json(gap)), *batch]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                async with self._db.engine.connect() as conn:
                    state = await self._store.append(
                        conn, pending, self._signer, checkpoint_every=self.checkpoint_every,
                        checkpoint_interval_us=round(self.checkpoint_interval_s * MICROS),
                        now_us=now_us, force_checkpoint=sign_head)
        except Exception as exc:  # the database is away or refused: keep the queue, retry
            log.warning("event=audit_write_failed records=%d queued=%d error=%s", len(pending),
                        len(self._queue), type(exc).__name__)
            await asyncio.sleep(self.retry_interval_s)
            return False
        self.last_commit_latency_s = time.perf_counter() - started
        for _ in batch:
            self._queue.popleft()
        self._dropped -= dropped
        self.committed_total += len(batch)
        self.commits_total += 1
        self._set_state(state)
        self._progress.set()
        return True
