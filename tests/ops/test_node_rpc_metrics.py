"""Node RPC latency and errors per node reach /metrics: calls to a real HTTP stand-in are timed by
node and method, and calls to a node that went away are counted as errors by kind."""
from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pool.app import PoolApp
from pool.bitcoind import BitcoindSource
from pool.config import load_config

from bitcoind_standin import BitcoindStandin
from pool_overrides import test_overrides


def samples(app: PoolApp, name: str) -> list:
    text = generate_latest(app.metrics.registry).decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


async def test_rpc_latency_and_errors_by_node():
    node = BitcoindStandin()
    await node.start()
    source = BitcoindSource([node.url], user=node.user, password=node.password, poll_interval_s=0.05,
                            refresh_s=3600, backoff_initial_s=0.05, backoff_max_s=0.1)
    app = PoolApp(load_config(overrides=test_overrides()), source=source)
    await app.start()
    try:
        await asyncio.wait_for(app.jobs.first_job.wait(), 10)
        await asyncio.sleep(0.3)
        counts = {s.labels["method"]: s.value for s in samples(app, "kzpool_node_rpc_seconds_count")}
        assert counts.get("getblocktemplate", 0) >= 1 and counts.get("getbestblockhash", 0) >= 1
        assert all(s.labels["node"] == source.health()[0].name for s in samples(app, "kzpool_node_rpc_seconds_count"))
        await node.stop()
        await asyncio.sleep(0.5)
        errors = samples(app, "kzpool_node_rpc_errors_total")
        assert errors and sum(s.value for s in errors) >= 1
        assert {s.labels["error"] for s in errors} <= {"NodeUnreachable", "RpcTimeout"}
    finally:
        await app.stop()
        await node.close()


async def test_sharelog_commit_latency_histogram():
    from pool.simnet import SimulatedChain
    from stratum_client import StratumTestClient
    app = PoolApp(load_config(overrides=test_overrides()), source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        for i in range(3):
            assert (await miner.request("mining.submit", miner.mine_share(extranonce2=i)))["result"] is True
        (count,) = samples(app, "kzpool_sharelog_commit_seconds_count")
        assert count.value >= 1
        await miner.close()
    finally:
        await app.stop()


async def test_ledger_totals_exported_after_a_block_matures():
    from payouts.ledger import CHAIN_COINBASE
    from pool.simnet import SimulatedChain
    from pool_overrides import EASY_BLOCK_BITS
    from stratum_client import StratumTestClient
    chain = SimulatedChain(bits=EASY_BLOCK_BITS, refresh_s=3600)
    app = PoolApp(load_config(overrides=test_overrides(**{"payouts.maturity": "1", "payouts.tracker_interval_s": "0.1",
                                                           "payouts.share_wait_s": "0.1"})), source=chain)
    await app.start()
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        assert (await miner.request("mining.submit", miner.mine_share()))["result"] is True
        for _ in range(100):
            await asyncio.sleep(0.1)
            balances = await app.ledger.balances()
            if any(b.amount for a, b in balances.items() if a.startswith("miner:")):
                break
        app._ledger_task.cancel()       # one refresh now rather than waiting for the 30 s loop
        task = asyncio.create_task(app._refresh_ledger_totals(interval_s=3600))
        await asyncio.sleep(0.3)
        task.cancel()
        found = {s.labels["account"]: s.value for s in samples(app, "kzpool_ledger_balance_satoshis")}
        assert found[CHAIN_COINBASE] < 0
        assert found["miners:available"] + found["miners:immature"] > 0
        await miner.close()
    finally:
        await app.stop()
