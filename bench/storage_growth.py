"""Database growth per million shares, measured: raw shares (table + indexes) and the per-minute
statistics compaction leaves behind.

    PYTHONPATH=. python bench/storage_growth.py [--backend sqlite|postgresql|both]
        [--shares 1000000] [--workers 500]

Shares are spread over `--workers` workers at 500 shares/s of simulated time (~33 minutes per
million, so the statistics table gets enough rows to measure), then compacted. Statistics grow
per worker-minute, whatever the share rate, so they are printed per worker per day.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import secrets
from datetime import UTC, datetime

from sqlalchemy import text

from bench_database import fresh_database
from pool.compaction import compact
from pool.db import Database
from pool.share_rows import ShareRowWriter, share_row
from pool.sharelog import ShareRecord

SIMULATED_RATE = 500  # shares per second of share time: ~33 minutes per million
CHUNK = 20_000


def records(start: int, count: int, workers: int, t0: float) -> list[ShareRecord]:
    return [ShareRecord(time=t0 + i / SIMULATED_RATE, login=f"acct{i % workers % 50}",
                        worker=f"acct{i % workers % 50}.rig{i % workers}", job_id=f"{i // 30_000:x}",
                        height=850_000, difficulty=65536.0, share_hash=secrets.token_hex(32),
                        is_block=False, extranonce1="0badcafe", extranonce2=f"{i:016x}",
                        ntime=1_730_000_000 + i // SIMULATED_RATE, nonce=i & 0xFFFFFFFF,
                        version=0x20000000, peer=f"10.{i % 250}.0.7:41000")
            for i in range(start, start + count)]


async def table_bytes(db: Database, table: str) -> int:
    async with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            return int((await conn.execute(text(
                f"SELECT pg_total_relation_size('{table}')"))).scalar_one())
        # dbstat counts the pages of a table and of each of its indexes.
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return int((await conn.execute(text(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = :t OR name IN "
            "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t)"),
            {"t": table})).scalar_one() or 0)


async def run(backend: str, shares: int, workers: int) -> None:
    async with fresh_database(backend) as db:
        writer = ShareRowWriter(db, commit_timeout_s=60)
        t0 = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
        for start in range(0, shares, CHUNK):
            batch = [share_row(r) for r in records(start, CHUNK, workers, t0)]
            for i in range(0, CHUNK, 2000):
                assert await writer.write(batch[i:i + 2000])
        await writer.close()
        raw = await table_bytes(db, "shares")
        folded = await compact(db, datetime.fromtimestamp(t0 + shares / SIMULATED_RATE + 60, UTC))
        stats = await table_bytes(db, "worker_stats_minute")
        async with db.engine.connect() as conn:
            minutes = (await conn.execute(text("SELECT COUNT(*) FROM worker_stats_minute"))).scalar_one()
        per_million = 1_000_000 / shares
        print(f"{backend:10s} raw_shares_mb_per_million={raw * per_million / 2**20:.1f} "
              f"bytes_per_share={raw / shares:.0f} (table+indexes, {shares:,} shares)")
        print(f"{backend:10s} stats_rows={minutes} bytes_per_worker_minute={stats / max(minutes, 1):.0f} "
              f"mb_per_worker_day={stats / max(minutes, 1) * 1440 / 2**20:.3f} folded={folded}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--shares", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=500)
    args = parser.parse_args()
    for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
        gc.collect()
        asyncio.run(run(backend, args.shares, args.workers))


if __name__ == "__main__":
    main()
