"""A running pool for the operations tests, wired as production wires it: a Bitcoin Core stand-in as its
node (regtest difficulty: nearly every share is a block, so blocks and new tips happen), a SQLite share
log behind the share sink, the metrics endpoint, and test miners that keep submitting shares, some of
them refused (duplicates), one of them hanging up.

Import it as `from ops_pool import ...` (pytest puts this directory on the path: no __init__.py).
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from bitcoind_standin import BitcoindStandin
from pool.app import PoolApp
from pool.bitcoind import BitcoindSource
from pool.config import load_config
from pool.db import Database
from pool.metrics import metrics_for
from pool.metrics_http import HttpServer, start_metrics_server
from pool.sharelog import ShareLog
from stratum_client import StratumTestClient

TIMEOUT_FACTOR = float(os.environ.get("KZPOOL_TEST_TIMEOUT_FACTOR", "1"))
PASSWORD = "standin-password"


def wait_s(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


def pool_overrides() -> list[str]:
    return ['stratum.host="127.0.0.1"', "stratum.port=0", "stratum.start_difficulty=1e-6",
            "stratum.min_difficulty=1e-8", "node.source=bitcoind", "chain.network=regtest"]


@dataclass
class OpsPool:
    app: PoolApp
    node: BitcoindStandin
    sharelog: ShareLog
    db: Database
    metrics_server: HttpServer
    miners: list[StratumTestClient] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    submitted: int = 0

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port

    @property
    def stratum_port(self) -> int:
        return self.app.server.ports[0]

    def start_mining(self, interval_s: float = 0.05, duplicate_every: int = 5) -> None:
        """A miner that submits a share every `interval_s`, and every `duplicate_every`-th one twice."""
        self.tasks.append(asyncio.create_task(self._mine(interval_s, duplicate_every)))

    async def _mine(self, interval_s: float, duplicate_every: int) -> None:
        miner = await StratumTestClient.connect("127.0.0.1", self.stratum_port)
        self.miners.append(miner)
        await miner.handshake()
        extranonce2 = 0
        while not miner.closed:
            extranonce2 += 1
            share = miner.mine_share(extranonce2=extranonce2)
            await miner.request("mining.submit", share)
            self.submitted += 1
            if extranonce2 % duplicate_every == 0:
                await miner.request("mining.submit", share)
            await asyncio.sleep(interval_s)

    async def hang_up_one(self) -> None:
        """A second miner that connects, authorizes and leaves: a close with reason `peer`."""
        miner = await StratumTestClient.connect("127.0.0.1", self.stratum_port)
        await miner.handshake(worker="demo.leaver")
        await miner.close()

    async def stop_mining(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def close(self) -> None:
        await self.stop_mining()
        for miner in self.miners:
            await miner.close()
        self.metrics_server.close()
        await self.app.stop()
        await self.sharelog.close()
        await self.db.close()
        await self.node.close()


async def start_ops_pool(tmp_path: Path, per_login_top_n: int = 10) -> OpsPool:
    node = BitcoindStandin(password=PASSWORD)
    await node.start()
    overrides = pool_overrides() + [f'node.rpc_urls=["{node.url}"]']
    cfg = load_config(overrides=overrides)
    source = BitcoindSource([node.url], user="kzpool", password=PASSWORD, poll_interval_s=0.05,
                            refresh_s=60.0, timeout_s=wait_s(1), backoff_initial_s=0.05, backoff_max_s=0.2,
                            log_interval_s=0.0)
    app = PoolApp(cfg, source=source)
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/shares.sqlite3")
    await db.upgrade()
    sharelog = ShareLog(db, tmp_path / "shares.spill")
    await sharelog.start()
    # What the composition root does once the share log is wired into PoolApp.
    app.sink.store = sharelog
    metrics_for(app, per_login_top_n=per_login_top_n)     # before start: the first job is timed too
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), wait_s(5))
    server = await start_metrics_server(app, "127.0.0.1", 0)
    return OpsPool(app, node, sharelog, db, server)


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET over a fresh connection; returns status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), wait_s(5))
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, parsed, body


async def until(predicate, timeout_s: float = 5.0, step_s: float = 0.02) -> None:
    async with asyncio.timeout(wait_s(timeout_s)):
        while not predicate():
            await asyncio.sleep(step_s)
