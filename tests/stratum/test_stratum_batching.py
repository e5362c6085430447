"""Submissions that arrive in one event-loop turn are hashed in one batch call; a lone one at once."""
from __future__ import annotations

import json

from pool.app import PoolApp
from pool.config import load_config
from pool.simnet import SimulatedChain

from stratum_client import StratumTestClient
from pool_overrides import test_overrides as test_config


class CountingHasher:
    """Wraps the pool's real hasher and records batch sizes (the hashing itself is untouched)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[int] = []

    def hash_batch(self, job, subs):
        self.batches.append(len(subs))
        return self.inner.hash_batch(job, subs)


async def test_pipelined_submits_share_one_batch_and_each_gets_its_reply():
    app = PoolApp(load_config(overrides=test_config()), source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    counting = CountingHasher(app.hasher)
    app.server.hasher = counting
    await app.start()
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        shares = [miner.mine_share(extranonce2=i) for i in range(20)]
        await miner.send_raw(b"".join(json.dumps({"id": 100 + i, "method": "mining.submit", "params": p}).encode()
                                      + b"\n" for i, p in enumerate(shares)))
        await miner.wait_for(lambda: all(100 + i in miner.replies for i in range(20)))
        assert all(miner.replies[100 + i]["result"] is True for i in range(20))
        assert sum(counting.batches) == 20
        assert max(counting.batches) > 1          # one segment, one loop turn: batched
        counting.batches.clear()
        lone = miner.mine_share(extranonce2=99)
        assert (await miner.request("mining.submit", lone))["result"] is True
        assert counting.batches == [1]
        await miner.close()
    finally:
        await app.stop()


class RevocableAuthorizer:
    """An authorizer whose licences can be withdrawn mid-session (the registry's watcher does this)."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()

    async def authorize(self, worker, password, peer):
        from stratum.interfaces import Account
        return Account(worker.split(".")[0], worker)

    def is_still_valid(self, login: str) -> bool:
        return login not in self.revoked


async def test_shares_in_flight_after_revocation_are_refused():
    auth = RevocableAuthorizer()
    app = PoolApp(load_config(overrides=test_config()), source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600),
                  authorizer=auth)
    await app.start()
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake(worker="farm.rig1")
        assert (await miner.request("mining.submit", miner.mine_share(worker="farm.rig1")))["result"] is True
        auth.revoked.add("farm")
        reply = await miner.request("mining.submit", miner.mine_share(extranonce2=1, worker="farm.rig1"))
        assert reply["error"][0] == 24 and "licence" in reply["error"][1]
        assert app.server.stats.shares[("rejected", "licence_invalid")] == 1
        await miner.close()
    finally:
        await app.stop()


class GatedSink:
    """Wraps the pool's sink; holds every batch until `release` is set (a database that stalls)."""

    def __init__(self, inner) -> None:
        import asyncio
        self.inner = inner
        self.release = asyncio.Event()
        self.waiting = 0

    async def accept_batch(self, shares):
        self.waiting += len(shares)
        await self.release.wait()
        return await self.inner.accept_batch(shares)


async def test_a_storage_backlog_pauses_reading_and_every_share_is_answered_after_it_drains():
    """With max_shares_in_flight awaiting storage, the pool stops reading submits (their bytes wait
    in TCP), so the backlog stays bounded; once storage answers, reading resumes and every share
    gets its reply."""
    import asyncio
    limit = 8
    app = PoolApp(load_config(overrides=test_config(**{"stratum.max_shares_in_flight": str(limit)})),
                  source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    gated = GatedSink(app.server.sink)
    app.server.sink = gated
    try:
        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        shares = [miner.mine_share(extranonce2=i) for i in range(40)]
        for i, p in enumerate(shares):    # one write each: several reads, so the hold can act between them
            await miner.send_raw(json.dumps({"id": 100 + i, "method": "mining.submit", "params": p}).encode() + b"\n")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        stats = app.server.stats
        assert stats.read_pauses >= 1
        assert limit <= stats.shares_in_flight < 40          # bounded: the rest was never read
        assert not any(100 + i in miner.replies for i in range(40))
        gated.release.set()
        await miner.wait_for(lambda: all(100 + i in miner.replies for i in range(40)))
        assert all(miner.replies[100 + i]["result"] is True for i in range(40))
        assert stats.shares_in_flight == 0 and stats.shares[("accepted", "")] == 40
        await miner.close()
    finally:
        await app.stop()
