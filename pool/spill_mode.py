"""Spill mode: the share log's answer to a database that is away.

When a commit fails, that batch and every later one are fsync'd to the spill file instead, so the
file keeps their order, and a replayer task moves the file into the database, oldest line first,
whenever the database answers again. Only when the whole file is stored does spill mode end. The
replayer runs beside the writer, on a connection of its own, so knocking on a database that is
down never delays an acknowledgement. Replay is idempotent (inserts skip shares already stored),
so a crash at any point, mid-replay included, leaves each acknowledged share stored exactly once.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .share_rows import ShareRow, ShareRowWriter
from .spill import SpillFile, encode_line

log = logging.getLogger(__name__)


class SpillMode:
    def __init__(self, spill: SpillFile, replay_rows: ShareRowWriter,
                 decode: Callable[[list[Any]], ShareRow], max_replay_rows: int,
                 retry_interval_s: float) -> None:
        self.spill = spill
        self._rows = replay_rows
        self._decode = decode
        self._max_replay_rows = max_replay_rows
        self.retry_interval_s = retry_interval_s
        # Held while appending to or emptying the file, and while switching the mode.
        self._lock = asyncio.Lock()
        self.active = False
        self._offset = 0  # of the first line not yet in the database
        self._replayer: asyncio.Task[None] | None = None
        self.commits = 0  # replayed batches committed

    async def open(self) -> None:
        """Lock the file, and replay what a previous run left there before returning; if the
        database is down, stay in spill mode and keep retrying in the background."""
        self.spill.open()
        if self.spill.size:
            self.active = True
            log.warning("event=spill_found path=%s bytes=%d", self.spill.path, self.spill.size)
            while self.active and await self._replay_step():
                pass
            if self.active:
                self._start_replayer()

    async def store(self, spill_rows: Sequence[Sequence[Any]], database_failed: bool) -> bool | None:
        """Spill a batch if spill mode is on or `database_failed` turns it on: True once fsync'd,
        False if the file failed too. None if spill mode is off: the database takes the batch
        (the replayer may have caught up while this batch waited for the lock)."""
        async with self._lock:
            if not (self.active or database_failed):
                return None
            try:
                await asyncio.to_thread(self.spill.append, encode_line(spill_rows))
            except OSError as exc:
                log.error("event=spill_write_failed path=%s error=%s", self.spill.path, exc)
                return False
            if not self.active:
                self.active = True
                log.warning("event=spill_mode_on path=%s", self.spill.path)
                self._start_replayer()
            return True

    async def close(self) -> None:
        """Stop replaying; a backlog stays in the file for the next start."""
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
        await self._rows.close()
        self.spill.close()

    def _start_replayer(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay_loop(), name="sharelog-replayer")

    async def _replay_loop(self) -> None:
        while self.active:
            await asyncio.sleep(self.retry_interval_s)
            try:
                while self.active and await self._replay_step():
                    pass
            except Exception:  # keep retrying: the shares stay safe in the file meanwhile
                log.exception("event=replay_failed path=%s offset=%d", self.spill.path, self._offset)

    async def _replay_step(self) -> bool:
        """Move the next lines of the file to the database; False if the database failed.
        Ends spill mode once the whole file is stored."""
        spill_rows, next_offset = self.spill.read(self._offset, self._max_replay_rows)
        if not spill_rows and self._offset < self.spill.size:
            log.error("event=replay_stuck path=%s offset=%d reason=unreadable_line",
                      self.spill.path, self._offset)
            return False
        if spill_rows:
            if not await self._rows.write([self._decode(row) for row in spill_rows]):
                return False
            self.commits += 1
            self._offset = next_offset
        async with self._lock:
            if self._offset >= self.spill.size:
                self.spill.clear()
                self._offset = 0
                self.active = False
                log.warning("event=spill_mode_off path=%s", self.spill.path)
        return True
