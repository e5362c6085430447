"""The block tracker against a node's confirmations: immature credits once the block is in the
chain, available at maturity, reversed when orphaned; every scheme's split lands in the ledger
exactly; an unreachable node changes nothing."""
from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from sqlalchemy import insert, select

from payouts import schemes
from payouts.block_tracker import BlockTracker
from payouts.ledger import CHAIN_COINBASE, POOL_FEES, POOL_PPS, Ledger, miner_account
from pool.db import Database
from pool.models import Block, BlockStatus

from payout_fixtures import (SettableClock, audit_records, clock, ledger, payout_db, share_hash,  # noqa: F401
                             store_shares)

REWARD = 312_500_000 + 12_345
T0 = 1_781_000_000 * 1_000_000


class FakeNode:
    """The node's answer per block hash (an external system): None unknown, -1 orphaned."""

    def __init__(self) -> None:
        self.confs: dict[str, int | None] = {}
        self.down = False

    async def __call__(self, block_hash: str) -> int | None:
        if self.down:
            raise ConnectionError("node down")
        return self.confs.get(block_hash)


async def add_block(db: Database, n: int, worker: str, at_us: int, *, store_share: bool = True,
                    difficulty: float = 4.0) -> str:
    block_hash = share_hash(10_000 + n)
    if store_share:
        await store_shares(db, [(worker, 1.0, at_us, block_hash)], block_hashes=[block_hash])
    async with db.engine.begin() as conn:
        await conn.execute(insert(Block).values(
            height=100 + n, hash=block_hash.hex(), status=BlockStatus.ACCEPTED, reward_sats=REWARD,
            network_difficulty=difficulty, found_at=datetime.fromtimestamp(at_us / 1e6 + 0.5, UTC)))
    return block_hash.hex()


def tracker(db: Database, ledger: Ledger, node: FakeNode, clock: SettableClock, audit: list, **kw) -> BlockTracker:
    options = dict(scheme="pplns", fee_bps=200, pplns_window_factor=2.0, maturity=3, share_wait_s=60)
    options.update(kw)
    return BlockTracker(db, ledger, node, audit=lambda k, p: audit.append((k, p)), clock=clock, **options)


async def status_of(db: Database, block_hash: str) -> BlockStatus:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(Block.status).where(Block.hash == block_hash))).scalar_one()


async def test_pplns_block_credits_immature_then_matures(payout_db: Database, ledger: Ledger, clock, audit_records):
    history = [("alice.rig1", 2.0), ("bolat.s9", 3.0), ("alice.rig1", 1.5), ("caspian.x", 2.5)]
    await store_shares(payout_db, [(w, d, T0 + i * 1000, share_hash(i)) for i, (w, d) in enumerate(history)])
    block = await add_block(payout_db, 1, "bolat.s9", T0 + 10_000)
    clock.moment = datetime.fromtimestamp(T0 / 1e6 + 5, UTC)
    node = FakeNode()
    t = tracker(payout_db, ledger, node, clock, audit_records)
    node.confs[block] = 1
    assert await t.check_once() == {}                       # credited, still accepted
    # window = 2 x difficulty 4 = 8: the block share (1) + caspian 2.5 + alice 1.5 + bolat 3
    expected = schemes.pplns(REWARD, 200, [("bolat", 1.0), ("caspian", 2.5), ("alice", 1.5), ("bolat", 3.0)],
                             Fraction(8))
    balances = await ledger.balances()
    for login, sats in expected.credits.items():
        assert balances[miner_account(login, "immature")].amount == sats
        assert balances[miner_account(login, "immature")].commission == expected.commissions[login]
    assert balances[CHAIN_COINBASE].amount == -REWARD and sum(b.amount for b in balances.values()) == 0
    node.confs[block] = 2
    assert await t.check_once() == {}
    node.confs[block] = 3
    assert await t.check_once() == {block: "confirmed"}
    assert await status_of(payout_db, block) is BlockStatus.CONFIRMED
    balances = await ledger.balances()
    assert {login: balances[miner_account(login, "available")].amount for login in expected.credits} == \
        expected.credits
    assert balances[POOL_FEES].amount == expected.fee
    assert all(b.amount == 0 for a, b in balances.items() if a.endswith("immature"))
    assert await t.check_once() == {}                       # confirmed is final: nothing posted twice
    assert [p["status"] for k, p in audit_records if k == "block_status"] == ["confirmed"]


async def test_orphaned_block_reverses_its_credits(payout_db: Database, ledger: Ledger, clock, audit_records):
    await store_shares(payout_db, [("alice.rig1", 3.0, T0, share_hash(1))])
    block = await add_block(payout_db, 1, "bolat.s9", T0 + 1000)
    rejected = await add_block(payout_db, 2, "alice.rig1", T0 + 2000)
    clock.moment = datetime.fromtimestamp(T0 / 1e6 + 5, UTC)
    node = FakeNode()
    t = tracker(payout_db, ledger, node, clock, audit_records)
    node.confs[block] = 2
    await t.check_once()                                    # block credited; `rejected` unknown: orphaned
    assert await status_of(payout_db, rejected) is BlockStatus.ORPHANED
    assert await ledger.lines(f"block:{rejected}:found") == ()
    assert (await ledger.balances())[miner_account("alice", "immature")].amount > 0
    node.confs[block] = -1                                  # lost a reorg
    assert await t.check_once() == {block: "orphaned"}
    balances = await ledger.balances()
    assert all(b.amount == 0 and b.commission == 0 for b in balances.values())
    reversal = await ledger.lines(f"block:{block}:orphaned")
    found = await ledger.lines(f"block:{block}:found")
    assert sorted((l.account, -l.amount, -l.commission) for l in reversal) == \
        sorted((l.account, l.amount, l.commission) for l in found)
    statuses = [(p["hash"], p["status"]) for k, p in audit_records if k == "block_status"]
    assert statuses == [(rejected, "orphaned"), (block, "orphaned")]
    assert [p["ref"] for k, p in audit_records if k == "ledger"] == [f"block:{block}:found", f"block:{block}:orphaned"]


async def test_prop_solo_and_pps_splits(payout_db: Database, ledger: Ledger, clock, audit_records):
    await store_shares(payout_db, [("alice.rig1", 2.0, T0, share_hash(1)), ("bolat.s9", 1.0, T0 + 10, share_hash(2))])
    first = await add_block(payout_db, 1, "caspian.x", T0 + 20)
    await store_shares(payout_db, [("dana.cpu", 5.0, T0 + 30, share_hash(3))])
    second = await add_block(payout_db, 2, "alice.rig1", T0 + 40)
    clock.moment = datetime.fromtimestamp(T0 / 1e6 + 5, UTC)
    node = FakeNode()
    node.confs.update({first: 5, second: 4})
    await tracker(payout_db, ledger, node, clock, audit_records, scheme="prop").check_once()
    lines = {l.account: l.amount for l in await ledger.lines(f"block:{first}:found")}
    expected = schemes.prop(REWARD, 200, [("alice", 2.0), ("bolat", 1.0), ("caspian", 1.0)])
    assert {a.split(":")[1]: v for a, v in lines.items() if a.startswith("miner:")} == expected.credits
    lines = {l.account: l.amount for l in await ledger.lines(f"block:{second}:found")}
    expected = schemes.prop(REWARD, 200, [("dana", 5.0), ("alice", 1.0)])      # the round after `first`
    assert {a.split(":")[1]: v for a, v in lines.items() if a.startswith("miner:")} == expected.credits

    third = await add_block(payout_db, 3, "bolat.s9", T0 + 50)
    fourth = await add_block(payout_db, 4, "dana.cpu", T0 + 60)
    node.confs.update({third: 3, fourth: 3})
    await tracker(payout_db, ledger, node, clock, audit_records, scheme="solo").check_once()
    fee = schemes.fee_of(REWARD, 200)
    assert {l.account: l.amount for l in await ledger.lines(f"block:{third}:found")} == {
        CHAIN_COINBASE: -REWARD, "pool:fees:immature": fee, miner_account("bolat", "immature"): REWARD - fee}
    fifth = await add_block(payout_db, 5, "dana.cpu", T0 + 70)
    node.confs[fifth] = 3
    await tracker(payout_db, ledger, node, clock, audit_records, scheme="pps").check_once()
    assert {l.account: l.amount for l in await ledger.lines(f"block:{fifth}:matured")} == {
        "pool:pps:immature": -REWARD, POOL_PPS: REWARD}
    assert sum(b.amount for b in (await ledger.balances()).values()) == 0 and await ledger.unbalanced() == []


async def test_unreachable_node_and_missing_share(payout_db: Database, ledger: Ledger, clock, audit_records):
    block = await add_block(payout_db, 1, "alice.rig1", T0, store_share=False)
    await store_shares(payout_db, [("alice.rig1", 1.0, T0 - 10, share_hash(1)), ("bolat.s9", 1.0, T0 + 10**6,
                                                                                   share_hash(2))])
    node = FakeNode()
    node.confs[block] = 1
    node.down = True
    t = tracker(payout_db, ledger, node, clock, audit_records, share_wait_s=60)
    clock.moment = datetime.fromtimestamp(T0 / 1e6 + 10, UTC)
    assert await t.check_once() == {}
    assert await status_of(payout_db, block) is BlockStatus.ACCEPTED     # "unknown" is never "orphaned"
    node.down = False
    await t.check_once()
    assert await ledger.lines(f"block:{block}:found") == ()              # its share may still be coming
    clock.advance(seconds=120)
    await t.check_once()                    # share never came: every share up to the block's time counts
    credited = {l.account for l in await ledger.lines(f"block:{block}:found")}
    assert miner_account("alice", "immature") in credited and miner_account("bolat", "immature") not in credited


@pytest.mark.parametrize("factor", [0.25, 1000.0])
async def test_window_factor_edges(payout_db: Database, ledger: Ledger, clock, audit_records, factor: float):
    await store_shares(payout_db, [("alice.rig1", 1.0, T0, share_hash(1))])
    block = await add_block(payout_db, 1, "bolat.s9", T0 + 10)
    node = FakeNode()
    node.confs[block] = 1
    clock.moment = datetime.fromtimestamp(T0 / 1e6 + 5, UTC)
    await tracker(payout_db, ledger, node, clock, audit_records, pplns_window_factor=factor).check_once()
    credited = {l.account for l in await ledger.lines(f"block:{block}:found") if l.account.startswith("miner:")}
    # window 1 (0.25 x 4): only the block share; window 4000: both shares, the window not filled
    assert credited == ({"miner:bolat:immature"} if factor < 1 else {"miner:bolat:immature", "miner:alice:immature"})
