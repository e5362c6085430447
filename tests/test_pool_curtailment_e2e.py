"""The composition root's wiring of curtailment, end to end: an order given with `kzpool curtail` in
another process reaches the demo miner of a default-wired pool within 5 s, its later shares do not
count, it is disconnected after the grace period, and once the order is cancelled it mines again."""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from pool.app import PoolApp
from pool.config import load_config
from pool.simnet import SimulatedChain

from pool_overrides import test_overrides
from stratum_client import StratumTestClient

REPO = Path(__file__).resolve().parents[1]


async def kzpool(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pool.cli", *args, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_curtailment_order_reaches_the_wired_pool(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3"
    app = PoolApp(load_config(overrides=test_overrides(**{"database.url": f'"{url}"', "curtailment.grace_s": "1.0"})),
                  source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        assert (await miner.request("mining.submit", miner.mine_share()))["result"] is True
        ordered = time.monotonic()
        out = await kzpool("curtail", "--login", "demo", "--from", "now", "--until", "+1h", "--reason",
                           "dispatch order 12", "--set", f'database.url="{url}"')
        order_id = out.split(":")[0].split()[-1]
        await miner.wait_for(lambda: any(n["method"] == "client.show_message" for n in miner.notifications), 6)
        assert time.monotonic() - ordered < 5.0 + 1.0     # the CLI's own start-up is inside this bound
        late = await miner.request("mining.submit", miner.mine_share(extranonce2=7))
        assert late["error"][0] == 24
        await miner.wait_for(lambda: miner.closed, 10)
        refused = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await refused.request("mining.subscribe", [])
        assert (await refused.request("mining.authorize", ["demo.rig1", "x"]))["error"][0] == 24
        await refused.close()
        await kzpool("curtail", "cancel", order_id, "--reason", "order lifted", "--set", f'database.url="{url}"')
        deadline = time.monotonic() + 10
        while True:
            again = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
            await again.request("mining.subscribe", [])
            if (await again.request("mining.authorize", ["demo.rig1", "x"]))["result"] is True:
                break
            await again.close()
            assert time.monotonic() < deadline, "the miner was never welcomed back"
            await asyncio.sleep(0.5)
        await again.wait_for(lambda: again.last_job_id is not None)
        again.extranonce2_size = 8
        again.extranonce1 = bytes.fromhex(next(r["result"][1] for r in again.replies.values()
                                                if isinstance(r.get("result"), list)))
        assert (await again.request("mining.submit", again.mine_share()))["result"] is True
        await again.close()
    finally:
        await app.stop()
