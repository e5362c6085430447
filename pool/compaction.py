"""Compaction: raw shares older than the payout window folded into per-worker per-minute totals.

Each chunk is one transaction that adds the chunk's totals to worker_stats_minute (upsert, so a
minute split across chunks or runs, or a share replayed late from a spill file, adds up) and
deletes exactly the rows it counted:
- PostgreSQL: one statement, `WITH moved AS (DELETE ... RETURNING ...) INSERT ... SELECT FROM moved`,
  so a share committed concurrently is either counted and deleted or left alone, never lost;
- SQLite: BEGIN IMMEDIATE takes the write lock first, so no share can arrive between the
  INSERT ... SELECT and the DELETE.
The cutoff is floored to a minute so a run never splits a minute it could have finished.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database
from .models import MICROS_PER_SECOND, Block, BlockStatus
from .share_export import to_micros

log = logging.getLogger(__name__)

MICROS_PER_MINUTE = 60 * MICROS_PER_SECOND
CHUNK_ROWS = 50_000  # one transaction's worth: bounded lock time and WAL growth
_FOLD = """
    SELECT worker_id, (time_us / {minute}) * 60 AS minute_s, COUNT(*) AS shares,
           SUM(difficulty) AS difficulty_sum, SUM(CASE WHEN is_block THEN 1 ELSE 0 END) AS blocks
    FROM {source} WHERE {where} GROUP BY worker_id, (time_us / {minute}) * 60
"""
_UPSERT = """
    ON CONFLICT (worker_id, minute_s) DO UPDATE SET
        shares = worker_stats_minute.shares + excluded.shares,
        difficulty_sum = worker_stats_minute.difficulty_sum + excluded.difficulty_sum,
        blocks = worker_stats_minute.blocks + excluded.blocks
"""
_INSERT = "INSERT INTO worker_stats_minute (worker_id, minute_s, shares, difficulty_sum, blocks)"
POSTGRES_CHUNK = text(
    "WITH moved AS (DELETE FROM shares WHERE time_us <= :last_us "
    "RETURNING worker_id, time_us, difficulty, is_block), folded AS ("
    + _INSERT + _FOLD.format(minute=MICROS_PER_MINUTE, source="moved", where="true") + _UPSERT
    + ") SELECT COUNT(*) FROM moved")
SQLITE_FOLD = text(_INSERT + _FOLD.format(minute=MICROS_PER_MINUTE, source="shares",
                                          where="time_us <= :last_us") + _UPSERT)
SQLITE_DELETE = text("DELETE FROM shares WHERE time_us <= :last_us")
CHUNK_END = text("SELECT time_us FROM shares WHERE time_us < :cutoff_us "
                 "ORDER BY time_us LIMIT 1 OFFSET :offset")
LAST_BEFORE = text("SELECT MAX(time_us) FROM shares WHERE time_us < :cutoff_us")


async def compact(db: Database, older_than: datetime, *, chunk_rows: int = CHUNK_ROWS) -> int:
    """Fold every share with time < older_than (floored to the minute) into worker_stats_minute
    and delete it. Returns the number of shares folded."""
    cutoff_us = to_micros(older_than) // MICROS_PER_MINUTE * MICROS_PER_MINUTE
    total = 0
    while True:
        async with db.engine.connect() as conn:
            await db.begin_write(conn)
            folded = await _fold_chunk(db, conn, cutoff_us, chunk_rows)
            await conn.commit()
        if folded == 0:
            break
        total += folded
    log.info("event=compaction older_than=%s shares_folded=%d",
             older_than.astimezone(UTC).isoformat(), total)
    return total


async def _fold_chunk(db: Database, conn: AsyncConnection, cutoff_us: int, chunk_rows: int) -> int:
    """Fold the oldest ~chunk_rows shares below the cutoff (ties on the last time included)."""
    last_us = (await conn.execute(CHUNK_END, {"cutoff_us": cutoff_us, "offset": chunk_rows - 1})
               ).scalar()
    if last_us is None:
        last_us = (await conn.execute(LAST_BEFORE, {"cutoff_us": cutoff_us})).scalar()
        if last_us is None:
            return 0
    if db.dialect == "postgresql":
        return int((await conn.execute(POSTGRES_CHUNK, {"last_us": last_us})).scalar_one())
    await conn.execute(SQLITE_FOLD, {"last_us": last_us})
    return (await conn.execute(SQLITE_DELETE, {"last_us": last_us})).rowcount


async def compaction_cutoff(db: Database, keep: timedelta, now: datetime | None = None) -> datetime:
    """The newest safe `older_than`: `keep` (at least the payout window) before now, and before the
    oldest block whose payout is not settled, since its payout still reads the raw shares."""
    moment = now or datetime.now(UTC)
    async with db.engine.connect() as conn:
        oldest_open = (await conn.execute(
            select(func.min(Block.found_at)).where(Block.status.in_(
                [BlockStatus.CANDIDATE, BlockStatus.SUBMITTED, BlockStatus.ACCEPTED])))).scalar()
    if oldest_open is not None:
        if oldest_open.tzinfo is None:  # SQLite returns naive datetimes; they are stored as UTC
            oldest_open = oldest_open.replace(tzinfo=UTC)
        moment = min(moment, oldest_open)
    return moment - keep


async def run_compaction(db: Database, keep: timedelta, interval_s: float = 3600.0) -> None:
    """Background task for the app: compact every `interval_s` until cancelled."""
    while True:
        try:
            await compact(db, await compaction_cutoff(db, keep))
        except Exception:  # a failed run is retried next interval; the shares are still there
            log.exception("event=compaction_failed")
        await asyncio.sleep(interval_s)
