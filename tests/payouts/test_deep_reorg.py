"""Reorgs deeper than maturity: a matured block is watched for `reorg_watch` more confirmations;
found off the best chain, its reward is taken back (the pool's part in full, each miner's from
what it still holds, the rest to pool:deficit), loudly; past the window, or when the node does
not know the block at all, nothing moves."""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import insert

from payouts.block_tracker import REORG_WATCH
from payouts.ledger import (CHAIN_COINBASE, CHAIN_PAYMENTS, POOL_DEFICIT, POOL_FEES, POOL_PPS, Balance, Ledger, Line,
                            Posting, claw_back, miner_account)
from payouts.models import PayoutRun
from pool.db import Database
from pool.models import BlockStatus

from payout_fixtures import audit_records, clock, ledger, payout_db, share_hash, store_shares  # noqa: F401
from test_block_tracker import REWARD, T0, FakeNode, add_block, status_of, tracker


class CountingNode(FakeNode):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def __call__(self, block_hash: str) -> int | None:
        self.asked.append(block_hash)
        return await super().__call__(block_hash)


async def matured_block(db: Database, ledger: Ledger, clock, audit: list, **kw):
    await store_shares(db, [("alice.rig1", 3.0, T0, share_hash(1)), ("bolat.s9", 1.0, T0 + 10, share_hash(2))])
    block = await add_block(db, 1, "bolat.s9", T0 + 20)
    clock.moment = datetime.fromtimestamp(T0 / 1e6 + 5, UTC)
    node = CountingNode()
    t = tracker(db, ledger, node, clock, audit, **kw)
    node.confs[block] = 3                                   # maturity 3
    assert await t.check_once() == {block: "confirmed"}
    return block, node, t


def credits_of(found) -> dict[str, int]:
    return {l.account: l.amount for l in found}


async def test_a_matured_block_reorganised_out_takes_its_reward_back(payout_db, ledger: Ledger, clock, audit_records,
                                                                      caplog):
    block, node, t = await matured_block(payout_db, ledger, clock, audit_records)
    found = await ledger.lines(f"block:{block}:found")
    node.confs[block] = 50
    assert await t.check_once() == {}                       # still in the chain: nothing moves
    node.confs[block] = -1                                  # a reorg 50+ blocks deep left it behind
    with caplog.at_level(logging.ERROR, "kzpool.payouts.blocks"):
        assert await t.check_once() == {block: "orphaned"}
    assert "event=block_reorged_after_maturity" in caplog.text and t.deep_reorgs == 1
    assert await status_of(payout_db, block) is BlockStatus.ORPHANED
    balances = await ledger.balances()
    # Nothing had been paid: every account is back where it was before the block.
    assert all(b == Balance(0, 0) for a, b in balances.items() if a != POOL_DEFICIT), balances
    assert balances.get(POOL_DEFICIT) is None
    reorged = credits_of(await ledger.lines(f"block:{block}:reorged"))
    assert reorged[CHAIN_COINBASE] == REWARD and reorged[POOL_FEES] == -credits_of(found)["pool:fees:immature"]
    (status,) = [p for k, p in audit_records if k == "block_status" and p["status"] == "reorged_after_maturity"]
    assert status["hash"] == block and status["deficit_sats"] == 0 and status["runs_to_check"] == []
    assert status["confirmations"] == -1 and status["reward_sats"] == REWARD
    assert await t.check_once() == {}                       # orphaned is final: posted once
    assert [p["ref"] for k, p in audit_records if k == "ledger"].count(f"block:{block}:reorged") == 1
    assert await ledger.unbalanced() == []


async def test_what_the_miners_no_longer_hold_is_the_pools_deficit(payout_db, ledger: Ledger, clock, audit_records):
    block, node, t = await matured_block(payout_db, ledger, clock, audit_records)
    credit = {a: (l.amount, l.commission) for l in await ledger.lines(f"block:{block}:found")
              for a in [l.account] if a.startswith("miner:")}
    alice, alice_com = credit[miner_account("alice", "immature")]
    bolat, bolat_com = credit[miner_account("bolat", "immature")]
    # alice was paid (a sent payout run), bolat's licence lapsed: his balance is frozen; both
    # earned 1,000 sats more since.
    await ledger.post(Posting("test:paid", "test", (Line(miner_account("alice", "available"), -alice, -alice_com),
                                                    Line(CHAIN_PAYMENTS, alice))))
    await ledger.post(Posting("test:frozen", "test", (Line(miner_account("bolat", "available"), -bolat, -bolat_com),
                                                      Line(miner_account("bolat", "frozen"), bolat, bolat_com))))
    await ledger.post(Posting("test:more", "test", (Line(CHAIN_COINBASE, -2_000),
                                                    Line(miner_account("alice", "available"), 1_000, 10),
                                                    Line(miner_account("bolat", "available"), 1_000, 10))))
    async with payout_db.engine.begin() as conn:
        await conn.execute(insert(PayoutRun).values(
            id="r" * 32, label="kzpool-payout-" + "r" * 32, method="sendmany", status="sent", created_us=1,
            updated_us=1, sent_us=round(clock() * 1e6) + 1, total_sats=alice, txid="ab" * 32, note=""))
    node.confs[block] = -1
    assert await t.check_once() == {block: "orphaned"}
    balances = await ledger.balances()
    # alice: her 1,000 taken back, the rest of her credit is gone with the payment: the deficit.
    assert balances[miner_account("alice", "available")] == Balance(0, 0)
    # bolat: the 1,000 available first, then the frozen balance for the rest.
    assert balances[miner_account("bolat", "available")] == Balance(0, 0)
    assert balances[miner_account("bolat", "frozen")].amount == 1_000
    assert balances[POOL_DEFICIT] == Balance(-(alice - 1_000), 0)
    assert sum(b.amount for b in balances.values()) == 0 and await ledger.unbalanced() == []
    (status,) = [p for k, p in audit_records if k == "block_status" and p["status"] == "reorged_after_maturity"]
    assert status["shortfall"] == {"alice": alice - 1_000} and status["deficit_sats"] == alice - 1_000
    assert status["runs_to_check"] == ["r" * 32]            # a payout that may have spent the lost coinbase


async def test_pps_block_reorganised_out_is_the_pools(payout_db, ledger: Ledger, clock, audit_records):
    block, node, t = await matured_block(payout_db, ledger, clock, audit_records, scheme="pps")
    assert (await ledger.balances())[POOL_PPS].amount == REWARD
    node.confs[block] = -1
    await t.check_once()
    balances = await ledger.balances()
    assert balances[POOL_PPS].amount == 0 and balances[CHAIN_COINBASE].amount == 0
    assert balances.get(POOL_DEFICIT) is None


async def test_the_watch_ends_maturity_plus_reorg_watch_deep(payout_db, ledger: Ledger, clock, audit_records):
    block, node, t = await matured_block(payout_db, ledger, clock, audit_records)
    assert t.reorg_watch == REORG_WATCH
    t.reorg_watch = 5
    node.asked.clear()
    node.confs[block] = 7
    await t.check_once()
    assert node.asked == [block]                            # 7 < 3 + 5: still watched
    node.confs[block] = 8
    await t.check_once()
    node.confs[block] = -1                                  # past the window: not asked any more
    node.asked.clear()
    assert await t.check_once() == {} and node.asked == []
    assert await status_of(payout_db, block) is BlockStatus.CONFIRMED


async def test_a_block_the_node_does_not_know_or_a_node_away_moves_nothing(payout_db, ledger: Ledger, clock,
                                                                           audit_records, caplog):
    block, node, t = await matured_block(payout_db, ledger, clock, audit_records)
    before = await ledger.balances()
    node.confs[block] = None                                # "not found": a node problem, not a reorg
    with caplog.at_level(logging.WARNING, "kzpool.payouts.blocks"):
        assert await t.check_once() == {}
    assert "event=block_matured_unknown" in caplog.text
    node.down = True
    assert await t.check_once() == {}
    assert await ledger.balances() == before and await status_of(payout_db, block) is BlockStatus.CONFIRMED
    assert t.deep_reorgs == 0


async def test_blocks_far_below_the_newest_are_not_asked(payout_db, ledger: Ledger, clock, audit_records):
    block, node, t = await matured_block(payout_db, ledger, clock, audit_records)
    t.reorg_watch = 5
    newer = await add_block(payout_db, 50, "alice.rig1", T0 + 30)     # height 150: 149 - 8 > 101
    node.confs[newer] = 1
    node.asked.clear()
    await t.check_once()
    assert block not in node.asked


def test_claw_back_takes_available_then_frozen_never_below_zero():
    balances = {miner_account("a", "available"): Balance(300, 30), miner_account("a", "frozen"): Balance(500, 50),
                miner_account("b", "available"): Balance(-5, 0)}
    lines, shortfall = claw_back(balances, [("a", 600, 60), ("a", 400, 40), ("b", 100, 1), ("c", 0, 0)])
    assert lines == [Line(miner_account("a", "available"), -300, -30), Line(miner_account("a", "frozen"), -500, -50),
                     Line(POOL_DEFICIT, -300)]
    assert shortfall == {"a": 200, "b": 100}
    assert sum(l.amount for l in lines) == -(600 + 400 + 100)
