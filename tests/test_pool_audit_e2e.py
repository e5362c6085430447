"""The wired pool writes its audit log: start, authorizations, a found block anchored in its own
coinbase, stop; the live database verifies with the pool's public key and the anchor is confirmed
from the block the simulated chain accepted (an independent copy of the coinbase)."""
from __future__ import annotations

import asyncio
import json

from sqlalchemy import text

from compliance.audit_verify import BlockCoinbase, verify_database
from pool.app import PoolApp
from pool.config import load_config
from pool.db import Database
from pool.simnet import SimulatedChain
from pool.txparse import Block

from stratum_client import StratumTestClient
from pool_overrides import EASY_BLOCK_BITS, test_overrides


async def test_pool_audit_log_verifies_and_block_anchors_it():
    chain = SimulatedChain(bits=EASY_BLOCK_BITS, refresh_s=3600)
    received: list[bytes] = []              # the blocks as the chain received them
    submit = chain.submit_block

    async def keep_and_submit(block: bytes):
        received.append(block)
        return await submit(block)
    chain.submit_block = keep_and_submit
    app = PoolApp(load_config(overrides=test_overrides()), source=chain)
    await app.start()
    miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
    await miner.handshake()
    refused = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
    await refused.request("mining.subscribe", [])
    assert (await refused.request("mining.authorize", ["nobody.rig", "x"]))["error"][0] == 24
    first = miner.last_job_id
    assert (await miner.request("mining.submit", miner.mine_share()))["result"] is True
    await miner.wait_for(lambda: miner.last_job_id != first)
    await miner.close()
    await refused.close()
    public_key = app.audit_key.public
    await app.stop()

    db = Database(app.cfg.database.url)
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT kind, payload FROM audit_log ORDER BY seq"))).all()
        kinds = [r.kind for r in rows]
        assert kinds[0] == "pool_start" and "pool_stop" in kinds and "checkpoint" in kinds
        decisions = [json.loads(r.payload) for r in rows if r.kind == "authorization"]
        assert {d["decision"] for d in decisions} == {"accepted", "refused"}
        assert all("password" not in json.dumps(d) for d in decisions)
        (found,) = [json.loads(r.payload) for r in rows if r.kind == "block_found"]
        # The accepted block itself, as the chain holds it, confirms the anchor in its coinbase.
        (block,) = [Block.deserialize(raw) for raw in received]
        assert chain.accepted == [block.header.hash]
        coinbase = BlockCoinbase(found["hash"], found["height"], block.transactions[0].inputs[0].script_sig, "simnet")
        report = await verify_database(db, [public_key], [coinbase], require_signed=True)
        assert report.ok, report.problem
        assert report.anchors and all(a.status == "confirmed" for a in report.anchors), report.anchors
    finally:
        await db.close()
