"""A stand-in pool process for the crash and outage tests: a ShareLog behind a TCP line protocol.

    python tests/sharelog_crash_driver.py --database-url URL --spill PATH [--commit-timeout S]

Prints `ready <port>` once the share log has started (any spill file replayed). Each line a client
sends is a JSON object of ShareRecord fields; the reply `true <share_hash> <worker>` is written
only after append() returned, exactly as the Stratum server replies to mining.submit, or
`false <share_hash> <worker> <error>` if it raised. SIGTERM closes the log cleanly; the tests
use SIGKILL.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pool.db import Database  # noqa: E402
from pool.sharelog import ShareLog, ShareRecord  # noqa: E402


async def serve(sharelog: ShareLog, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    async def submit(record: ShareRecord) -> None:
        try:
            await sharelog.append(record)
            reply = f"true {record.share_hash} {record.worker}\n"
        except Exception as exc:
            reply = f"false {record.share_hash} {record.worker} {type(exc).__name__}\n"
        writer.write(reply.encode())

    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        task = asyncio.create_task(submit(ShareRecord(**json.loads(line))))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    writer.close()


async def main(args: argparse.Namespace) -> None:
    db = Database(args.database_url)
    sharelog = ShareLog(db, Path(args.spill), commit_timeout_s=args.commit_timeout,
                        retry_interval_s=args.retry_interval)
    await sharelog.start()
    server = await asyncio.start_server(lambda r, w: serve(sharelog, r, w), "127.0.0.1", 0)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    await sharelog.close()
    await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--spill", required=True)
    parser.add_argument("--commit-timeout", type=float, default=5.0)
    parser.add_argument("--retry-interval", type=float, default=0.2)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s driver %(levelname)s %(name)s %(message)s")
    asyncio.run(main(parser.parse_args()))
