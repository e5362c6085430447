"""Two pool nodes (separate PoolApps, ports and node ids) on one PostgreSQL database: miners on both,
every share stored once under its own node's extranonce1 space, and singleton work (payout runs,
compaction) held by one node at a time through a PostgreSQL advisory lock."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from pool.app import PoolApp
from pool.config import load_config
from pool.db import Database
from pool.simnet import SimulatedChain
from pool.singleton import SingletonBusy, singleton

from db_fixtures import create_postgres_database, require_postgres
from pool_overrides import test_overrides
from stratum_client import StratumTestClient


async def test_two_nodes_one_postgres(tmp_path):
    await require_postgres()
    url = await create_postgres_database()
    chain = SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600)        # both nodes follow one chain
    apps = []
    for node_id in (1, 2):
        cfg = load_config(overrides=test_overrides(**{
            "node_id": str(node_id), "database.url": f'"{url}"',
            "database.spill_path": f'"{tmp_path}/spill-{node_id}.log"',
            "audit.key_file": f'"{tmp_path}/audit-{node_id}.pem"'}))
        app = PoolApp(cfg, source=chain)
        await app.start()
        apps.append(app)
    miners = []
    try:
        for app in apps:
            for _ in range(2):
                miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
                await miner.handshake()
                miners.append(miner)
        assert {m.extranonce1[0] for m in miners} == {1, 2}
        sent = []
        for i, miner in enumerate(miners):
            for n in range(3):
                share = miner.mine_share(extranonce2=n)
                assert (await miner.request("mining.submit", share))["result"] is True
                sent.append(miner.extranonce1.hex())
    finally:
        for miner in miners:
            await miner.close()
        for app in apps:
            await app.stop()
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT encode(extranonce1, 'hex'), count(*) FROM shares "
                                            "GROUP BY 1"))).all()
            duplicates = (await conn.execute(text("SELECT count(*) - count(DISTINCT share_hash) FROM shares"))).scalar()
        assert dict(rows) == {en1: sent.count(en1) for en1 in set(sent)}
        assert duplicates == 0
    finally:
        await db.close()


async def test_singleton_work_runs_on_one_node_at_a_time():
    await require_postgres()
    url = await create_postgres_database()
    node_a, node_b = Database(url), Database(url)
    try:
        async with singleton(node_a, "payouts"):
            with pytest.raises(SingletonBusy):
                async with singleton(node_b, "payouts"):
                    pass
            async with singleton(node_b, "compaction"):      # other work is not blocked
                pass
        async with singleton(node_b, "payouts"):            # released: the other node may run it now
            pass
    finally:
        await node_a.close()
        await node_b.close()


async def test_singleton_on_sqlite_across_processes(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3")
    other = Database(f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3")
    try:
        async with singleton(db, "payouts"):
            with pytest.raises(SingletonBusy):
                async with singleton(other, "payouts"):
                    pass
        async with singleton(other, "payouts"):
            pass
    finally:
        await db.close()
        await other.close()
