"""What happens to a share that met its target: block submission when it is a block, then storage.

The Stratum server awaits `accept` before it replies `true`, so a share is acknowledged only once
the share log says it is durable. A block candidate is assembled and sent to every node first: a
block is worth more than any latency.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from stratum.interfaces import Account, Peer
from stratum.jobs import Job, ShareResult, Submission

from .blockbuild import assemble_block
from .template import SubmitOutcome, TemplateSource

log = logging.getLogger("kzpool.shares")


class ShareStore(Protocol):
    async def append(self, record: "object") -> None: ...


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
                 record_factory=None) -> None:
        self.source = source
        self.store = store
        self.record_factory = record_factory    # builds the store's record type from a share
        self.blocks = BlockBook()
        # Called with each found block and its bytes once every node answered (audit log, block table).
        self.on_block: list[Callable[[BlockEvent, bytes], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def accept(self, account: Account, peer: Peer, extranonce1: bytes, job_id: str, job: Job,
                     sub: Submission, difficulty: float, result: ShareResult) -> None:
        if result.meets_network:
            # Submitted before the share is stored: the block must not wait for the database.
            task = asyncio.create_task(self.submit_block(account, job, sub, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.store is not None and self.record_factory is not None:
            await self.store.append(self.record_factory(account, peer, job_id, job, sub, difficulty, result))

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
