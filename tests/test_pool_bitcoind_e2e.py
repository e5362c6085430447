"""The whole pool against a strict Bitcoin Core stand-in over real sockets.

A miner mines through the pool; the block (carrying real mainnet transactions, one of them segwit)
is built by the pool, accepted by the stand-in's independent checks (python-bitcoinlib + Core's rules),
extends the node's chain, and the pool moves every miner to the new tip with a clean job.
"""
from __future__ import annotations

import asyncio

from pool.app import PoolApp
from pool.config import load_config
from stratum.errors import ErrorCode

from bitcoind_standin import BitcoindStandin
from stratum_client import StratumTestClient


def bitcoind_config(*urls: str, user: str, password: str) -> list[str]:
    url_list = ",".join(f'"{u}"' for u in urls)
    return ['stratum.host="127.0.0.1"', "stratum.port=0", "stratum.start_difficulty=1e-6",
            "node.source=bitcoind", f"node.rpc_urls=[{url_list}]", f'node.rpc_user="{user}"',
            f'node.rpc_password="{password}"', "node.refresh_s=3600", "chain.network=regtest"]


async def start_pool(*nodes: BitcoindStandin) -> PoolApp:
    cfg = load_config(overrides=bitcoind_config(*(n.url for n in nodes), user=nodes[0].user,
                                                password=nodes[0].password))
    app = PoolApp(cfg)
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 10)
    return app


async def test_block_through_the_pool_is_accepted_by_the_node_and_extends_its_chain():
    node = BitcoindStandin()
    await node.start()
    app = await start_pool(node)
    try:
        assert any(tx.has_witness for tx in app.jobs.template.transactions), "template carries a segwit tx"
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        first_job, tip_before = miner.last_job_id, node.chain.tip.hash
        share = miner.mine_share()
        reply = await miner.request("mining.submit", share)
        assert reply["result"] is True
        # regtest's target is far easier than the share target: this share is a block
        await miner.wait_for(lambda: miner.last_job_id != first_job)
        assert node.submitted and node.submitted[-1][1] is None, node.submitted
        assert node.chain.tip.hash == node.submitted[-1][0] != tip_before
        assert node.chain.tip.prev == tip_before
        assert app.sink.blocks.accepted == 1
        notify = [n for n in miner.notifications if n["method"] == "mining.notify"][-1]
        assert notify["params"][8] is True                           # clean job on the new tip
        stale = list(share)
        stale[2] = (7).to_bytes(miner.extranonce2_size, "big").hex()
        assert (await miner.request("mining.submit", stale))["error"][0] == ErrorCode.JOB_NOT_FOUND
        await miner.close()
    finally:
        await app.stop()
        await node.close()


async def test_outage_keeps_last_job_and_failover_node_takes_over():
    primary, backup = BitcoindStandin(), BitcoindStandin()
    backup.user, backup.password = primary.user, primary.password
    await primary.start()
    await backup.start()
    app = await start_pool(primary, backup)
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        await primary.stop()                       # the node goes away: miners keep mining
        share = miner.mine_share()
        assert (await miner.request("mining.submit", share))["result"] is True
        # the backup sees a new tip: the pool follows it even with the primary down
        before = miner.last_job_id
        backup.mine(2)
        await miner.wait_for(lambda: miner.last_job_id != before, timeout=15)
        assert app.jobs.template.height == backup.chain.tip.height + 1
        await primary.start()                      # comes back on a stale tip: never used for jobs
        await asyncio.sleep(1.0)
        assert app.jobs.template.prev_hash_display == backup.chain.tip.hash
        await miner.close()
    finally:
        await app.stop()
        await primary.close()
        await backup.close()
