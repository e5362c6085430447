"""End to end on the simulated chain: licensed miners mine blocks through the real pool over TCP,
the block tracker (on the share sink's hook) credits them by PPLNS, a reorg orphans the newest
block and reverses its credits, the others mature, and a payout run pays the balances through
the wallet stand-in over real HTTP, one transaction; the audit log holds every movement, and
`kzpool payouts balances` / `report distributions` read the same database."""
from __future__ import annotations

import asyncio
import json

from sqlalchemy import select, text

from payouts.block_tracker import BlockTracker
from payouts.cli import main as payouts_main
from payouts.gates import LicenceGate
from payouts.ledger import CHAIN_COINBASE, CHAIN_PAYMENTS, Ledger, miner_account
from payouts.runner import PayoutRunner
from payouts.settings import PayoutSettings
from payouts.wallet_rpc import WalletRpc
from pool.app import PoolApp
from pool.config import load_config
from pool.db import Database
from pool.models import Block, BlockStatus
from pool.simnet import SimulatedChain

from payout_fixtures import regtest_address, test_iin
from pool_overrides import EASY_BLOCK_BITS, test_overrides
from stratum_client import StratumTestClient
from wallet_standin import WalletStandin

MINERS = ("alice", "bolat")


def licences_for_demo_dc() -> str:
    lines = ["login,iin_bin,name,licence_no,subtype,issued,expires,status,suspended_until,datacentre,payout_address"]
    lines += [f"{login},{test_iin(n)},Miner {login.title()} IE,KZ-DM-{n:04d},II,2025-01-10,,active,,demo-dc,"
              f"{regtest_address(login)}" for n, login in enumerate(MINERS, 1)]
    return "\n".join(lines) + "\n"


async def mine_block(miner: StratumTestClient, worker: str, extranonce2: int) -> None:
    """Every share is a block at EASY_BLOCK_BITS: submit one, wait for the clean job on the new tip."""
    before = miner.last_job_id
    reply = await miner.request("mining.submit", miner.mine_share(extranonce2=extranonce2, worker=worker))
    assert reply["result"] is True, reply
    await miner.wait_for(lambda: miner.last_job_id != before)


async def test_mine_mature_orphan_and_pay_on_the_simulated_chain(tmp_path):
    chain = SimulatedChain(bits=EASY_BLOCK_BITS, refresh_s=3600)
    app = PoolApp(load_config(overrides=test_overrides()), source=chain)
    await app.start()
    wallet = WalletStandin(balance_sats=1_000 * 100_000_000)
    await wallet.start()
    ledger = Ledger(app.db, audit=app.audit.record)
    # Window = 5000 x network difficulty (~2.3e-6 at these bits): a block's share plus about one
    # earlier share, so most blocks are split between both miners.
    tracker = BlockTracker(app.db, ledger, chain.confirmations, scheme="pplns", fee_bps=100,
                           pplns_window_factor=5000.0, maturity=2, share_wait_s=5, audit=app.audit.record)
    app.sink.on_block.append(tracker.on_block)
    client = WalletRpc(wallet.url, user=wallet.user, password=wallet.password, timeout_s=5)
    try:
        assert app.registry is not None
        assert (await app.registry.import_licences(licences_for_demo_dc())).ok
        miners = {}
        for login in MINERS:
            miners[login] = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
            await miners[login].handshake(worker=f"{login}.rig1")
        for n, login in enumerate(["alice", "bolat", "alice", "bolat", "alice"]):
            await mine_block(miners[login], f"{login}.rig1", n)
            await asyncio.sleep(0)
        await tracker.drain()
        assert len(chain.accepted) == 5
        await tracker.check_once()                    # 5..1 confirmations: the first four mature
        orphan = chain.accepted[-1][::-1].hex()
        assert await ledger.lines(f"block:{orphan}:found")
        split = [h for h in (b[::-1].hex() for b in chain.accepted) if sum(
            l.account.startswith("miner:") for l in await ledger.lines(f"block:{h}:found")) == 2]
        assert len(split) >= 3, "PPLNS windows reach back into the other miner's share"
        chain.reorg(1)                                # the newest block loses to a competing branch
        changed = await tracker.check_once()
        assert changed == {orphan: "orphaned"}
        async with app.db.engine.connect() as conn:
            statuses = dict((await conn.execute(select(Block.hash, Block.status))).all())
            rewards = dict((await conn.execute(select(Block.hash, Block.reward_sats))).all())
        assert list(statuses.values()).count(BlockStatus.CONFIRMED) == 4 and statuses[orphan] is BlockStatus.ORPHANED
        balances = await ledger.balances()
        assert -balances[CHAIN_COINBASE].amount == sum(r for h, r in rewards.items() if h != orphan)
        assert all(b.amount == 0 for a, b in balances.items() if a.endswith(":immature"))
        available = {login: balances[miner_account(login, "available")].amount for login in MINERS}
        assert all(v > 0 for v in available.values())
        assert sum(available.values()) + balances["pool:fees"].amount == -balances[CHAIN_COINBASE].amount
        reversed_lines = await ledger.lines(f"block:{orphan}:orphaned")
        assert sorted((l.account, -l.amount) for l in reversed_lines) == sorted(
            (l.account, l.amount) for l in await ledger.lines(f"block:{orphan}:found"))

        runner = PayoutRunner(app.db, ledger, client, LicenceGate(app.registry, "regtest"),
                              PayoutSettings(threshold_sats=100_000), audit=app.audit.record)
        result = await runner.run()
        assert result.status == "sent" and len(wallet.txs) == 1
        assert wallet.paid() == {regtest_address(login): available[login] for login in MINERS}
        balances = await ledger.balances()
        assert balances[CHAIN_PAYMENTS].amount == sum(available.values())
        assert sum(b.amount for b in balances.values()) == 0
        for miner in miners.values():
            await miner.close()
    finally:
        await tracker.stop()
        await client.close()
        await wallet.close()
        await app.stop()

    db = Database(app.cfg.database.url)
    try:
        async with db.engine.connect() as conn:
            rows = [(k, json.loads(p)) for k, p in (await conn.execute(text(
                "SELECT kind, payload FROM audit_log ORDER BY seq"))).all()]
    finally:
        await db.close()
    ledger_refs = [p["ref"].rsplit(":", 1)[-1] for k, p in rows if k == "ledger"]
    assert sorted(ledger_refs) == sorted(["found"] * 5 + ["matured"] * 4 + ["orphaned", "reserve", "sent"])
    statuses = [p["status"] for k, p in rows if k == "block_status"]
    assert statuses == ["confirmed"] * 4 + ["orphaned"]
    assert [p["action"] for k, p in rows if k == "payout"] == ["run_prepared", "run_sent"]

    # The operator's commands read the same database.
    overrides = [arg for pair in (("--set", s) for s in test_overrides()) for arg in pair]
    assert await asyncio.to_thread(payouts_main, ["payouts", "balances", *overrides]) == 0
    out = tmp_path / "distributions.csv"
    assert await asyncio.to_thread(payouts_main, ["report", "distributions", "--from", "2020-01-01", "--to",
                                                  "2099-12-31", "--output", str(out), *overrides]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("serial_no,distribution_id,miner_iin_bin") and len(lines) == 3
    assert test_iin(1) in lines[1] and "KZ-DM-0001" in lines[1]

