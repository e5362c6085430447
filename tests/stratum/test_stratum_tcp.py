"""The whole pool over real TCP sockets: handshake, a share the test mines, every refusal, junk input."""
from __future__ import annotations

import asyncio
import json

import pytest

from pool.app import PoolApp
from pool.config import load_config
from pool.simnet import SimulatedChain
from stratum.errors import ErrorCode

from pool_overrides import EASY_BLOCK_BITS, test_overrides
from stratum_client import StratumTestClient

test_config = test_overrides


@pytest.fixture
async def pool():
    cfg = load_config(overrides=test_config())
    app = PoolApp(cfg, source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 5)
    yield app
    await app.stop()


async def client_for(app: PoolApp) -> StratumTestClient:
    client = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
    await client.handshake()
    return client


def error_code(reply: dict) -> int | None:
    return reply["error"][0] if reply.get("error") else None


async def test_share_accepted_then_every_refusal_and_server_keeps_serving(pool: PoolApp):
    miner = await client_for(pool)
    methods = [n["method"] for n in miner.notifications]
    assert methods[:2] == ["mining.set_difficulty", "mining.notify"]

    share = miner.mine_share()
    reply = await miner.request("mining.submit", share)
    assert reply == {"id": reply["id"], "result": True, "error": None}

    assert error_code(await miner.request("mining.submit", share)) == ErrorCode.DUPLICATE_SHARE
    stale = list(share)
    stale[1] = "deadbeef"
    assert error_code(await miner.request("mining.submit", stale)) == ErrorCode.JOB_NOT_FOUND

    bad_ntime = miner.mine_share(extranonce2=1)
    bad_ntime[3] = f"{int(bad_ntime[3], 16) - 1:08x}"
    assert error_code(await miner.request("mining.submit", bad_ntime)) == ErrorCode.OTHER

    bad_bits = miner.mine_share(extranonce2=2) + ["e0000000"]
    assert error_code(await miner.request("mining.submit", bad_bits)) == ErrorCode.OTHER

    rolled = miner.mine_share(extranonce2=3, version_bits=0x00ABE000 & 0x1FFFE000)
    assert (await miner.request("mining.submit", rolled))["result"] is True

    # a nonce that misses the share target: low difficulty
    job, diff = miner.jobs[miner.last_job_id]
    from cpu_miner import miss
    from stratum.difficulty import target_for_difficulty
    en2 = (9).to_bytes(miner.extranonce2_size, "big")
    nonce = miss(job, miner.extranonce1, en2, target_for_difficulty(diff))
    low = ["demo.rig1", miner.last_job_id, en2.hex(), f"{job.ntime:08x}", f"{nonce:08x}"]
    assert error_code(await miner.request("mining.submit", low)) == ErrorCode.LOW_DIFFICULTY

    assert error_code(await miner.request("mining.unknown_thing", [])) == ErrorCode.OTHER

    await miner.send_raw(b'{"id": 77, "method": \n')
    await miner.wait_for(lambda: None in miner.replies)
    assert error_code(miner.replies[None]) == ErrorCode.OTHER
    assert not miner.closed

    other = await client_for(pool)
    await miner.send_raw(b"A" * 5000)          # over max_line_bytes = 4096, no newline
    await miner.wait_for(lambda: miner.closed)

    share = other.mine_share()
    assert (await other.request("mining.submit", share))["result"] is True
    stats = pool.server.stats
    assert stats.shares[("accepted", "")] == 3
    for reason in ("duplicate", "stale", "bad_ntime", "bad_version_bits", "low_difficulty"):
        assert stats.shares[("rejected", reason)] == 1, reason
    await other.close()


async def test_unauthorized_login_refused_with_24(pool: PoolApp):
    client = await StratumTestClient.connect("127.0.0.1", pool.server.ports[0])
    await client.request("mining.subscribe", [])
    reply = await client.request("mining.authorize", ["stranger.rig", "x"])
    assert error_code(reply) == ErrorCode.UNAUTHORIZED_WORKER and "unknown_login" in reply["error"][1]
    reply = await client.request("mining.submit", ["stranger.rig", "1", "00" * 8, "00000000", "00000000"])
    assert error_code(reply) == ErrorCode.UNAUTHORIZED_WORKER
    await client.close()


async def test_block_found_advances_chain_and_old_jobs_go_stale():
    cfg = load_config(overrides=test_config())
    chain = SimulatedChain(bits=EASY_BLOCK_BITS, refresh_s=3600)
    app = PoolApp(cfg, source=chain)
    await app.start()
    try:
        miner = await client_for(app)
        first_job = miner.last_job_id
        height = chain.tip_height
        share = miner.mine_share()
        assert (await miner.request("mining.submit", share))["result"] is True
        await miner.wait_for(lambda: miner.last_job_id != first_job)
        assert chain.tip_height == height + 1
        assert app.sink.blocks.accepted == 1
        clean = [n for n in miner.notifications if n["method"] == "mining.notify"][-1]
        assert clean["params"][8] is True
        stale = miner.mine_share(job_id=first_job, extranonce2=5) if first_job in miner.jobs else None
        if stale is None:   # the client dropped it on clean_jobs, as a real miner does: rebuild the params
            stale = list(share)
            stale[2] = (5).to_bytes(miner.extranonce2_size, "big").hex()
        assert error_code(await miner.request("mining.submit", stale)) == ErrorCode.JOB_NOT_FOUND
        await miner.close()
    finally:
        await app.stop()


async def test_shutdown_sends_reconnect(pool: PoolApp):
    miner = await client_for(pool)
    await pool.server.shutdown()
    await miner.wait_for(lambda: any(n["method"] == "client.reconnect" for n in miner.notifications))
    await miner.wait_for(lambda: miner.closed)


async def test_pipelined_handshake_in_one_segment(pool: PoolApp):
    reader, writer = await asyncio.open_connection("127.0.0.1", pool.server.ports[0])
    writer.write(b"".join(json.dumps(m).encode() + b"\n" for m in [
        {"id": 1, "method": "mining.configure", "params": [["version-rolling"], {"version-rolling.mask": "ffffffff"}]},
        {"id": 2, "method": "mining.subscribe", "params": ["cgminer/4.12"]},
        {"id": 3, "method": "mining.authorize", "params": ["demo.rig9", "x"]},
        {"id": 4, "method": "mining.suggest_difficulty", "params": [0.0001]},
    ]))
    seen = []
    while len(seen) < 7:
        seen.append(json.loads(await asyncio.wait_for(reader.readline(), 5)))
    ids = [m.get("id") for m in seen if m.get("id") is not None]
    assert ids == [1, 2, 3, 4]
    diffs = [m["params"][0] for m in seen if m.get("method") == "mining.set_difficulty"]
    assert diffs[-1] == 0.0001
    writer.close()
