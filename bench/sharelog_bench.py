"""Share log benchmark: sustained inserts per second and the latency an append adds at a fixed rate.

    PYTHONPATH=. python bench/sharelog_bench.py [--backend sqlite|postgresql|both]
        [--shares 300000] [--producers 8000] [--rate 10000] [--rate-seconds 5]
        [--pg-admin-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Durability is on for both: SQLite WAL with synchronous=FULL (fsync per commit), PostgreSQL with
its defaults (fsync=on, synchronous_commit=on). Each run uses a fresh database (a temporary
SQLite file, or a `kzpool_bench_<random>` PostgreSQL database dropped afterwards).
Throughput: `--producers` tasks append `--shares` precomputed shares as fast as acks come back.
Latency: shares are appended open-loop at `--rate` per second, one task each (as Stratum sessions
do), and the time from the scheduled moment to the append's return is recorded.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_database import PG_ADMIN_URL, fresh_database
from pool.db import Database
from pool.sharelog import ShareLog, ShareRecord


def make_records(count: int, workers: int = 500) -> list[ShareRecord]:
    now = time.time()
    return [ShareRecord(time=now + i * 1e-5, login=f"acct{i % 50}", worker=f"acct{i % 50}.rig{i % workers}",
                        job_id=f"{i // 5000:x}", height=850_000, difficulty=65536.0,
                        share_hash=secrets.token_hex(32), is_block=False, extranonce1="0badcafe",
                        extranonce2=f"{i:016x}", ntime=1_730_000_000, nonce=i & 0xFFFFFFFF,
                        version=0x20000000, peer=f"10.{i % 250}.0.7:41000")
            for i in range(count)]


async def throughput(db: Database, spill: Path, records: list[ShareRecord], producers: int) -> float:
    sharelog = ShareLog(db, spill)
    await sharelog.start()

    async def produce(start: int) -> None:
        for record in records[start::producers]:
            await sharelog.append(record)

    started = time.perf_counter()
    await asyncio.gather(*(produce(p) for p in range(producers)))
    elapsed = time.perf_counter() - started
    await sharelog.close()
    return len(records) / elapsed


async def latency(db: Database, spill: Path, records: list[ShareRecord], rate: float) -> list[float]:
    sharelog = ShareLog(db, spill)
    await sharelog.start()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    # Only pending tasks are kept, as a Stratum server keeps only live submissions: holding 50k
    # finished tasks would make the cyclic GC's full passes part of the measurement.
    pending: set[asyncio.Task[None]] = set()

    async def one(record: ShareRecord, due: float) -> None:
        await sharelog.append(record)
        latencies.append(loop.time() - due)

    started = loop.time()
    for i, record in enumerate(records):
        due = started + i / rate
        delay = due - loop.time()
        if delay > 0.001:  # schedule in 1 ms ticks, firing every share that is due
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(record, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await sharelog.close()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(backend: str, args: argparse.Namespace) -> None:
    records = make_records(args.shares + int(args.rate * args.rate_seconds))
    # The prebuilt records are the benchmark's, not the pool's: keep the cyclic GC from rescanning
    # them (its full passes over 350k objects would show up as latency the pool does not have).
    gc.freeze()
    bulk, paced = records[:args.shares], records[args.shares:]
    async with fresh_database(backend, args.pg_admin_url) as db:
        with tempfile.TemporaryDirectory(prefix="kzpool_spill_") as tmp:
            rate = await throughput(db, Path(tmp) / "bulk.spill", bulk, args.producers)
            lat = await latency(db, Path(tmp) / "paced.spill", paced, args.rate)
    print(f"{backend:10s} sustained_inserts_per_s={rate:,.0f} shares={len(bulk)} "
          f"producers={args.producers}")
    print(f"{backend:10s} append_latency_at_{args.rate:,.0f}_per_s p50_ms={percentile(lat, .5)*1e3:.2f} "
          f"p99_ms={percentile(lat, .99)*1e3:.2f} max_ms={max(lat)*1e3:.2f} "
          f"mean_ms={statistics.fmean(lat)*1e3:.2f} shares={len(lat)} "
          f"loadavg_1m_after={os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--shares", type=int, default=300_000)
    parser.add_argument("--producers", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    args = parser.parse_args()
    try:
        import uvloop  # the pool runs on uvloop where installed; measure what production runs
        uvloop.install()
    except ImportError:
        pass
    # Other processes' load skews every figure here; print it so a reader can judge the run.
    print(f"python={sys.version.split()[0]} cpus={os.cpu_count()} "
          f"loop={asyncio.get_event_loop_policy().__class__.__module__} "
          f"loadavg_1m_before={os.getloadavg()[0]:.2f}")
    for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
        asyncio.run(run(backend, args))


if __name__ == "__main__":
    main()
