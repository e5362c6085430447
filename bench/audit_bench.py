"""Audit log benchmark: what record() costs the caller, records appended per second (alone and
while shares flow), and what the audit writer does to share latency on the same database.

    PYTHONPATH=. python bench/audit_bench.py [--backend sqlite|postgresql|both]
        [--records 100000] [--rate 10000] [--seconds 5] [--audit-rate 1000]
        [--checkpoint-every 100]

Shares are appended open-loop at --rate per second through the real ShareLog (the latency
measure of bench/sharelog_bench.py) three times: alone; with audit records at --audit-rate per
second (a reconnect storm's worth of authorization decisions); and with audit records as fast as
the writer takes them (the worst case: both writers contend for the database all the time).
Each run uses a fresh database (bench/bench_database.py); durability settings as in production.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench_database import PG_ADMIN_URL, fresh_database
from sharelog_bench import latency, make_records, percentile

from compliance.audit_keys import SigningKey, generate_key_file
from compliance.audit_log import AuditLog
from pool.db import Database


def decision(i: int) -> dict[str, object]:
    """A realistic record: one authorization decision."""
    return {"decision": "accepted" if i % 10 else "refused",
            "reason": None if i % 10 else "licence_suspended", "login": f"farm{i % 300:03d}",
            "worker": f"farm{i % 300:03d}.rig{i % 4000:04d}", "source": f"10.{i % 250}.3.7:41{i % 1000:03d}"}


def record_call_cost(key: SigningKey, db: Database, count: int) -> float:
    """Microseconds per record() call: encode + queue, the whole cost on the caller's side."""
    log = AuditLog(db, key, max_queue=count + 1)
    started = time.perf_counter()
    for i in range(count):
        log.record("authorization", decision(i))
    return (time.perf_counter() - started) / count * 1e6


async def flat_out(log: AuditLog, stop: asyncio.Event) -> int:
    """Record as fast as the writer commits (about two batches queued); returns how many."""
    i = 0
    while not stop.is_set():
        while log.queue_depth < 2 * log.max_batch:
            log.record("authorization", decision(i))
            i += 1
        await asyncio.sleep(0.001)
    return i


async def paced(log: AuditLog, stop: asyncio.Event, rate: float) -> int:
    started, i = time.perf_counter(), 0
    while not stop.is_set():
        while i < (time.perf_counter() - started) * rate:
            log.record("authorization", decision(i))
            i += 1
        await asyncio.sleep(0.001)
    return i


async def throughput_alone(db: Database, key: SigningKey, count: int, every: int) -> float:
    log = AuditLog(db, key, checkpoint_every=every)
    await log.start()
    stop = asyncio.Event()
    producer = asyncio.create_task(flat_out(log, stop))
    started = time.perf_counter()
    while log.committed_total < count:
        await asyncio.sleep(0.01)
    rate = log.committed_total / (time.perf_counter() - started)
    stop.set()
    await producer
    await log.close()
    return rate


async def shares_with(db: Database, key: SigningKey, spill: Path, rate: float, seconds: float,
                      every: int, audit: Callable[[AuditLog, asyncio.Event], Awaitable[int]] | None,
                      ) -> tuple[list[float], float]:
    """Share append latencies at `rate`, with `audit` producing records meanwhile; and the audit
    records committed per second during the run."""
    log = AuditLog(db, key, checkpoint_every=every)
    await log.start()
    stop = asyncio.Event()
    producer = asyncio.create_task(audit(log, stop)) if audit else None
    before, started = log.committed_total, time.perf_counter()
    lat = await latency(db, spill, make_records(int(rate * seconds)), rate)
    committed = (log.committed_total - before) / (time.perf_counter() - started)
    stop.set()
    if producer:
        await producer
    await log.close()
    return lat, committed


def describe(lat: list[float]) -> str:
    return (f"p50_ms={percentile(lat, .5) * 1e3:.2f} p99_ms={percentile(lat, .99) * 1e3:.2f} "
            f"max_ms={max(lat) * 1e3:.2f} mean_ms={statistics.fmean(lat) * 1e3:.2f}")


async def run(backend: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kzpool_audit_bench_") as tmp:
        key = generate_key_file(Path(tmp) / "audit.pem")
        async with fresh_database(backend, args.pg_admin_url) as db:
            cost = record_call_cost(key, db, 20_000)
            alone = await throughput_alone(db, key, args.records, args.checkpoint_every)
            print(f"{backend:10s} record_call_us={cost:.1f} appended_per_s_alone={alone:,.0f} "
                  f"checkpoint_every={args.checkpoint_every}")
        runs: list[tuple[str, Callable[[AuditLog, asyncio.Event], Awaitable[int]] | None]] = [
            ("none", None),
            (f"{args.audit_rate:g}_per_s", lambda log, stop: paced(log, stop, args.audit_rate)),
            ("flat_out", flat_out)]
        baseline_p99 = 0.0
        for name, audit in runs:
            async with fresh_database(backend, args.pg_admin_url) as db:
                lat, committed = await shares_with(db, key, Path(tmp) / f"{name}.spill", args.rate,
                                                   args.seconds, args.checkpoint_every, audit)
            p99 = percentile(lat, .99)
            baseline_p99 = baseline_p99 or p99
            print(f"{backend:10s} shares_at_{args.rate:,.0f}_per_s audit={name:12s} {describe(lat)} "
                  f"p99_vs_none={p99 / baseline_p99:.2f}x audit_appended_per_s={committed:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--audit-rate", type=float, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    args = parser.parse_args()
    try:
        import uvloop  # the pool runs on uvloop where installed; measure what production runs
        uvloop.install()
    except ImportError:
        pass
    print(f"python={sys.version.split()[0]} cpus={os.cpu_count()} "
          f"loadavg_1m_before={os.getloadavg()[0]:.2f}")
    for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
        asyncio.run(run(backend, args))


if __name__ == "__main__":
    main()
