"""What payout computations cost over a large shares table: the PPLNS window walk, a PROP round,
PPS crediting of every worker-minute, and the ledger's balance query.

    PYTHONPATH=. python bench/payouts_bench.py [--backend sqlite|postgresql|both]
        [--shares 1000000] [--workers 500]

Shares are spread over `--workers` workers of 50 logins at 500 shares/s of simulated time, each
worker at one of three vardiff difficulties (so the (worker, difficulty) grouping sees what a pool
sees). The PPLNS window is set to half the stored difficulty: the walk reads ~half the table.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import secrets
import time
from datetime import UTC, datetime
from fractions import Fraction

from bench_database import fresh_database
from payouts.ledger import Ledger
from payouts.pps import PpsCreditor, PpsRate
from payouts.share_windows import ShareKey, find_block_share, pplns_window, round_window
from pool.db import Database
from pool.share_rows import ShareRowWriter, share_row
from pool.sharelog import ShareRecord

SIMULATED_RATE = 500
CHUNK = 20_000
DIFFICULTIES = (16384.0, 65536.0, 262144.0)


def records(start: int, count: int, workers: int, t0: float, last: int) -> list[ShareRecord]:
    out = []
    for i in range(start, start + count):
        worker = i % workers
        out.append(ShareRecord(time=t0 + i / SIMULATED_RATE, login=f"acct{worker % 50}",
                               worker=f"acct{worker % 50}.rig{worker}", job_id="1", height=850_000,
                               difficulty=DIFFICULTIES[worker % 3], share_hash=secrets.token_hex(32),
                               is_block=i == last, extranonce1="0badcafe", extranonce2=f"{i:016x}",
                               ntime=1_730_000_000, nonce=i & 0xFFFFFFFF, version=0x20000000, peer="10.0.0.7:1"))
    return out


async def timed(label: str, backend: str, work) -> object:
    started = time.perf_counter()
    result = await work
    print(f"{backend:10s} {label}: {time.perf_counter() - started:.2f} s")
    return result


async def run(backend: str, shares: int, workers: int) -> None:
    async with fresh_database(backend) as db:
        t0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        writer = ShareRowWriter(db, commit_timeout_s=60)
        last_hash = ""
        for start in range(0, shares, CHUNK):
            batch = records(start, min(CHUNK, shares - start), workers, t0, shares - 1)
            last_hash = batch[-1].share_hash
            rows = [share_row(r) for r in batch]
            for i in range(0, len(rows), 2000):
                assert await writer.write(rows[i:i + 2000])
        await writer.close()
        total = sum(Fraction(DIFFICULTIES[(i % workers) % 3]) for i in range(shares))
        await measure(db, backend, shares, last_hash, total, t0)


async def measure(db: Database, backend: str, shares: int, last_hash: str, total: Fraction, t0: float) -> None:
    async with db.engine.connect() as conn:
        end = await find_block_share(conn, last_hash)
        assert end is not None
        window = await timed(f"pplns_window over ~{shares // 2:,} shares", backend,
                             pplns_window(conn, end, total / 2))
        assert window.filled and len(window.weights) == 50
        await timed(f"prop round over {shares:,} shares", backend, round_window(conn, None, end))
        await timed("pplns_window, a 1-share window", backend,
                    pplns_window(conn, ShareKey(end.time_us, end.share_hash, end.worker_id), Fraction(1)))
    ledger = Ledger(db)

    async def rate() -> PpsRate:
        return PpsRate(1.1e14, 312_500_000, 900_000)
    span_s = shares / SIMULATED_RATE
    creditor = PpsCreditor(db, ledger, rate, fee_bps=100, lag_s=0, recheck_s=span_s + 120,
                           clock=lambda: t0 + span_s + 60)
    batch = await timed(f"pps credit_once, {span_s / 60:.0f} minutes of shares", backend, creditor.credit_once())
    print(f"{backend:10s}   worker-minutes credited: {batch.minutes:,}")
    await timed("pps credit_once again (nothing new: the recheck read)", backend, creditor.credit_once())
    await timed("ledger balances", backend, ledger.balances())


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
