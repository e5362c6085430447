"""What happens to a share that met its target: block submission when it is a block, then storage.

The Stratum server awaits `accept_batch` (one call per event-loop turn) before it replies `true`,
so a share is acknowledged only once the share log says it is durable. A block candidate is assembled and sent to every node first: a
block is worth more than any latency.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from stratum.interfaces import AcceptedShare, Account
from stratum.jobs import Job, ShareResult, Submission

from .blockbuild import assemble_block
from .share_rows import ShareRow, row_from_share
from .models import MICROS_PER_SECOND
from .template import SubmitOutcome, TemplateSource

log = logging.getLogger("kzpool.shares")


class ShareStore(Protocol):
    async def append_rows(self, rows: "list[ShareRow]") -> None: ...


@dataclass
class BlockEvent:
    height: int
    hash_display: str
    worker: str
    outcomes: list[SubmitOutcome]
    at: float

    @property
    def accepted(self) -> bool:
        return any(o.accepted for o in self.outcomes)


@dataclass
class BlockBook:
    """Blocks this process found, newest last (the database keeps the durable record)."""
    found: list[BlockEvent] = field(default_factory=list)
    submitted: int = 0
    accepted: int = 0
    rejected: int = 0


class PoolShareSink:
    def __init__(self, source: TemplateSource, store: ShareStore | None = None,
                 row_factory: Callable[[AcceptedShare, int], ShareRow] | None = row_from_share) -> None:
        self.source = source
        self.store = store
        self.row_factory = row_factory    # builds the store's row from a share and the time in µs
        self.blocks = BlockBook()
        # Called with each found block and its bytes once every node answered (audit log, block table).
        self.on_block: list[Callable[[BlockEvent, bytes], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def accept_batch(self, shares: Sequence[AcceptedShare]) -> list[int]:
        for share in shares:
            if share.result.meets_network:
                # Submitted before the share is stored: the block must not wait for the database.
                task = asyncio.create_task(self.submit_block(share.account, share.job, share.sub, share.result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self.store is None or self.row_factory is None:
            return []
        now_us = round(time.time() * MICROS_PER_SECOND)
        rows: list[ShareRow] = []
        refused: list[int] = []
        make_row = self.row_factory
        for i, share in enumerate(shares):
            try:
                rows.append(make_row(share, now_us))
            except ValueError as exc:   # one bad record must not cost the batch its durability
                log.error("share_record_invalid worker=%s error=%s", share.account.worker, str(exc)[:200])
                refused.append(i)
        if rows:
            await self.store.append_rows(rows)
        return refused

    async def submit_block(self, account: Account, job: Job, sub: Submission, result: ShareResult) -> BlockEvent:
        block = assemble_block(job, sub.extranonce1, sub.extranonce2, sub.ntime, sub.nonce, sub.version)
        self.blocks.submitted += 1
        try:
            outcomes = await self.source.submit_block(block)
        except Exception as exc:
            log.exception("block_submit_failed height=%d hash=%s", job.height, result.hash_display)
            outcomes = [SubmitOutcome(self.source.name, None, error=str(exc))]
        event = BlockEvent(job.height, result.hash_display, account.worker, outcomes, time.time())
        self.blocks.found.append(event)
        if event.accepted:
            self.blocks.accepted += 1
        else:
            self.blocks.rejected += 1
        for o in outcomes:
            log.info("block_submitted height=%d hash=%s node=%s result=%s error=%s", job.height,
                     result.hash_display, o.node, o.result or "accepted", o.error or "")
        for hook in self.on_block:
            try:
                hook(event, block)
            except Exception:
                log.exception("block_hook_failed height=%d", job.height)
        if not event.accepted:
            log.warning("block_rejected height=%d hash=%s block_hex=%s", job.height, result.hash_display,
                        block.hex())
        return event

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
