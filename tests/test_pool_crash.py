"""Kill -9 the whole pool process while a miner submits: every share it acknowledged is stored once.

Real processes and sockets: `kzpool run` (embedded default: SQLite under ./var/, simulated chain) in a
subprocess, a test miner that pipelines real shares and records every `true`, SIGKILL at a random
moment, a restart (which replays any spill file), then the database is read directly.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from stratum.difficulty import target_for_difficulty

from cpu_miner import mine
from stratum_client import StratumTestClient

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pool(workdir: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    sets = ['stratum.host="127.0.0.1"', f"stratum.port={port}", "stratum.start_difficulty=1e-6",
            "stratum.target_share_s=0.01", "metrics.enabled=false", "admin.enabled=false", "log.level=WARNING"]
    args = [sys.executable, "-m", "pool.cli", "run"] + [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pool exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("pool did not start listening")


async def mine_until_killed(port: int, proc: subprocess.Popen, kill_after_s: float) -> set[str]:
    """Submits shares (several in flight) and returns the hashes of those answered `true`."""
    miner = await StratumTestClient.connect("127.0.0.1", port)
    await miner.handshake()
    acked: set[str] = set()
    pending: dict[int, str] = {}
    started = time.monotonic()
    en2 = 0
    try:
        while time.monotonic() - started < kill_after_s:
            job, diff = miner.jobs[miner.last_job_id]
            en2 += 1
            extranonce2 = en2.to_bytes(miner.extranonce2_size, "big")
            nonce, result = mine(job, miner.extranonce1, extranonce2, target_for_difficulty(diff))
            params = ["demo.rig1", miner.last_job_id, extranonce2.hex(), f"{job.ntime:08x}", f"{nonce:08x}"]
            msg_id = await miner.request("mining.submit", params, wait=False)
            pending[msg_id] = result.hash_display
            for done in [i for i in pending if i in miner.replies]:
                if miner.replies[done]["result"] is True:
                    acked.add(pending[done])
                del pending[done]
            await asyncio.sleep(0)
        proc.send_signal(signal.SIGKILL)      # mid-stream: some shares are in flight right now
        proc.wait(10)
        await asyncio.sleep(0.2)              # read any reply that left before the kill
        for done, share_hash in pending.items():
            if miner.replies.get(done, {}).get("result") is True:
                acked.add(share_hash)
    finally:
        await miner.close()
    return acked


def stored_share_hashes(db_file: Path) -> list[str]:
    with sqlite3.connect(db_file) as conn:
        return [row[0].hex() for row in conn.execute("SELECT share_hash FROM shares")]


async def test_sigkill_loses_no_acknowledged_share(tmp_path: Path):
    port = free_port()
    acked: set[str] = set()
    rng = random.Random()
    for _round in range(2):                   # two crashes, the second on a database with history
        proc = start_pool(tmp_path, port)
        await wait_for_port(port, proc)
        acked |= await mine_until_killed(port, proc, kill_after_s=rng.uniform(0.5, 2.0))
    # Restart once more: the pool replays whatever the spill file holds, then stops cleanly.
    proc = start_pool(tmp_path, port)
    await wait_for_port(port, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    stored = stored_share_hashes(tmp_path / "var" / "kzpool.sqlite3")
    assert len(acked) > 10, "the miner should have had shares acknowledged before the kills"
    counts = {h: stored.count(h) for h in acked}
    missing = [h for h, n in counts.items() if n == 0]
    doubled = [h for h, n in counts.items() if n > 1]
    assert not missing, f"{len(missing)} acknowledged shares lost"
    assert not doubled, f"{len(doubled)} shares stored twice"
    assert len(stored) == len(set(stored))
    print(json.dumps({"acked": len(acked), "stored": len(stored)}))
