"""The job feed: templates from the source become Stratum jobs broadcast to every miner.

A new prevhash gives a clean job (old jobs become stale at once); a refresh of the same tip gives a
job with `clean_jobs = false`, and the older jobs of that tip stay valid until the next block.
"""
from __future__ import annotations

import asyncio
import logging
import time
from itertools import count
from typing import Callable

from stratum.jobs import Job

from .blockbuild import JobBuilder
from .template import BlockTemplate, TemplateSource

log = logging.getLogger("kzpool.jobs")


class JobFeed:
    def __init__(self, source: TemplateSource, publish: Callable[[Job], int], payout_script: bytes,
                 tag: bytes, extranonce1_size: int, extranonce2_size: int,
                 extra_push: Callable[[], bytes] = lambda: b"", version_mask: int = 0x1FFFE000) -> None:
        self.source = source
        self.publish = publish
        self.payout_script = payout_script
        self.tag = tag
        self.extranonce1_size = extranonce1_size
        self.extranonce2_size = extranonce2_size
        self.extra_push = extra_push       # later features commit data into the coinbase (audit anchor)
        self.version_mask = version_mask
        self._builder = JobBuilder()
        self._ids = count(1)
        self.current: Job | None = None
        self.template: BlockTemplate | None = None
        self.first_job = asyncio.Event()
        self.tip_changes = 0
        self.last_template_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-feed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def next_job_id(self) -> str:
        return f"{next(self._ids):x}"

    def on_template(self, template: BlockTemplate) -> Job:
        clean = self.template is None or template.prev_hash != self.template.prev_hash
        if template.version & self.version_mask:
            # Rolling miners overwrite these bits: a deployment signalled there would be lost.
            log.warning("template_version_overlaps_rolling_mask version=%08x mask=%08x", template.version,
                        self.version_mask)
        job = self._builder.build_job(template, self.next_job_id(), self.payout_script, self.tag,
                                      self.extranonce1_size, self.extranonce2_size, clean, self.extra_push())
        self.template = template
        self.current = job
        self.last_template_at = time.time()
        if clean:
            self.tip_changes += 1
        sent = self.publish(job)
        log.info("job id=%s height=%d clean=%s txs=%d sessions=%d source=%s", job.job_id, template.height,
                 clean, len(template.transactions), sent, template.source or self.source.name)
        self.first_job.set()
        return job

    async def _run(self) -> None:
        while True:
            try:
                async for template in self.source.templates():
                    self.on_template(template)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Miners keep the last valid job; the source recovers by itself.
                log.exception("template_source_failed source=%s", self.source.name)
                await asyncio.sleep(1.0)
