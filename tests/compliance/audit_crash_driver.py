"""A stand-in pool process for the audit log's kill -9 tests: appends records as fast as the
writer takes them, so a SIGKILL almost always lands inside a write transaction.

    python tests/compliance/audit_crash_driver.py --database-url URL --key FILE [--writer N]

Prints `ready <seq>` once the log has read the committed head, then `committed <seq>` after each
flush: every seq printed is durable. Runs until killed (the tests use SIGKILL) or SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compliance.audit_keys import load_signing_key  # noqa: E402
from compliance.audit_log import AuditLog  # noqa: E402
from pool.db import Database  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    db = Database(args.database_url)
    log = AuditLog(db, load_signing_key(args.key), checkpoint_every=args.every,
                   max_batch=args.batch)
    await log.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {log.head()[0]}", flush=True)
    i = 0
    while not stop.is_set():
        # Keep one to two batches queued: the writer is never idle, so a kill lands mid-write.
        # The queue shrinks only when a batch has committed, so the head printed is durable.
        for _ in range(args.batch):
            log.record("crash_test", {"writer": args.writer, "i": i, "pad": "x" * args.pad})
            i += 1
        while log.queue_depth >= args.batch and not stop.is_set():
            await asyncio.sleep(0.001)
        print(f"committed {log.head()[0]}", flush=True)
    await log.close()
    await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--writer", type=int, default=0)
    parser.add_argument("--every", type=int, default=7)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--pad", type=int, default=1000)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="driver %(levelname)s %(name)s %(message)s")
    asyncio.run(main(parser.parse_args()))
