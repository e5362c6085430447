"""`kzpool run --workers 2` as real processes: one port, two workers, one template source, one /metrics.

Miners spread over both workers (distinct extranonce1 prefixes), every share is accepted and stored
once in the shared database, a block found through one worker moves miners on both to the new tip,
and the supervisor's /metrics carries both workers' series.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pool.metrics_merge import fetch_metrics

from stratum_client import StratumTestClient

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connect_when_up(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("supervisor never listened")


async def test_two_workers_share_a_port_a_chain_and_a_metrics_endpoint(tmp_path: Path):
    port, metrics_port = free_port(), free_port()
    sets = ['stratum.host="127.0.0.1"', f"stratum.port={port}", "stratum.start_difficulty=1e-6",
            "stratum.target_share_s=0.01", 'simnet.bits="207fffff"', f"metrics.port={metrics_port}",
            "admin.enabled=false", "log.level=WARNING"]
    args = [sys.executable, "-m", "pool.cli", "run", "--workers", "2"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    miners: list[StratumTestClient] = []
    try:
        await connect_when_up(port, proc)
        await asyncio.sleep(1.0)                      # both workers have joined the hub
        for _ in range(16):
            miner = await StratumTestClient.connect("127.0.0.1", port)
            await miner.handshake()
            miners.append(miner)
        prefixes = {m.extranonce1[:2] for m in miners}
        assert len(prefixes) == 2, f"all 16 connections landed on one worker: {prefixes}"
        assert len({m.extranonce1 for m in miners}) == 16

        # One miner on each worker finds a block (every share is one on this chain); after each,
        # miners on BOTH workers move to the new tip with a clean job.
        finders = [next(m for m in miners if m.extranonce1[:2] == p) for p in sorted(prefixes)]
        for finder in finders:
            before = {id(m): m.last_job_id for m in miners}
            reply = await finder.request("mining.submit", finder.mine_share())
            assert reply["result"] is True, reply
            for miner in miners:
                await miner.wait_for(lambda m=miner: m.last_job_id != before[id(m)], timeout=10)
                assert [n for n in miner.notifications if n["method"] == "mining.notify"][-1]["params"][8] is True

        text = await fetch_metrics(metrics_port)
        assert 'worker="0"' in text and 'worker="1"' in text
        accepted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith('kzpool_shares_total{') and 'result="accepted"' in line)
        assert accepted == 2
    finally:
        for miner in miners:
            await miner.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read().decode()[-3000:]
    with sqlite3.connect(tmp_path / "var" / "kzpool.sqlite3") as conn:
        stored = conn.execute("SELECT count(*) FROM shares").fetchone()[0]
        heights = [r[0] for r in conn.execute("SELECT height FROM shares ORDER BY height")]
    assert stored == 2
    assert heights[-1] > heights[0]                  # later shares were on later tips
