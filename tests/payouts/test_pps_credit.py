"""PPS/FPPS crediting from the stored shares: exactly once per share whatever the runs, late
(spilled) shares credited as a difference at their minute's first rate, compaction changes nothing,
and FPPS adds the recent templates' mean fees."""
from __future__ import annotations

from datetime import UTC, datetime

from payouts import schemes
from payouts.ledger import POOL_FEES, POOL_PPS, Ledger
from payouts.pps import PpsCreditor, PpsRate, TemplateRates
from pool.compaction import compact
from pool.db import Database
from pool.simnet import SimulatedChain

from payout_fixtures import audit_records, clock, ledger, payout_db, share_hash, store_shares  # noqa: F401

MINUTE_US = 60_000_000
T0 = 1_781_000_040 * 1_000_000 // MINUTE_US * MINUTE_US       # a minute boundary
RATE = PpsRate(network_difficulty=1000.0, block_value_sats=312_500_000, height=900_000)


def creditor(db: Database, ledger: Ledger, clock, rate: PpsRate = RATE, **kw) -> PpsCreditor:
    async def current() -> PpsRate:
        return rate
    options = dict(fee_bps=150, lag_s=120, recheck_s=3600)
    options.update(kw)
    return PpsCreditor(db, ledger, current, clock=clock, **options)


def at(minute: int, offset_s: float = 0) -> int:
    return T0 + minute * MINUTE_US + int(offset_s * 1e6)


async def available(ledger: Ledger) -> dict[str, int]:
    return {a.split(":")[1]: b.amount for a, b in (await ledger.balances("miner:")).items()}


def expected_net(difficulty_by_login: dict[str, float], fee_bps: int = 150) -> dict[str, int]:
    return {login: schemes.pps_increment(0, schemes.pps_value_usat(d, RATE.network_difficulty,
                                                                   RATE.block_value_sats), fee_bps).net
            for login, d in difficulty_by_login.items()}


async def test_every_share_credited_once_late_shares_as_a_difference(payout_db: Database, ledger: Ledger, clock):
    rows = [("alice.rig1", 1.0, at(0, 1), share_hash(1)), ("alice.rig2", 0.5, at(0, 30), share_hash(2)),
            ("bolat.s9", 2.0, at(1, 5), share_hash(3)), ("bolat.s9", 2.0, at(9, 5), share_hash(4))]
    await store_shares(payout_db, rows)
    clock.moment = datetime.fromtimestamp(at(5) / 1e6, UTC)         # minutes 0..2 are closed and old enough
    c = creditor(payout_db, ledger, clock)
    batch = await c.credit_once()
    assert batch is not None and batch.minutes == 3
    assert await available(ledger) == expected_net({"alice": 1.5, "bolat": 2.0})
    assert await c.credit_once() is None                            # nothing new: nothing posted
    # A spill replay stores a share of minute 0 late, with its original time.
    await store_shares(payout_db, [("alice.rig1", 0.25, at(0, 50), share_hash(5))])
    clock.advance(minutes=10)
    batch = await c.credit_once()
    assert batch is not None and batch.minutes == 2                # alice's minute 0 again, bolat's minute 9
    # ... valued together with the shares already credited in that minute: one floor, no drift
    assert await available(ledger) == expected_net({"alice": 1.75, "bolat": 4.0})
    balances = await ledger.balances()
    # the pool's PPS balance paid every credit and the commission on it
    assert balances[POOL_PPS].amount == -sum((await available(ledger)).values()) - balances[POOL_FEES].amount
    assert sum(b.amount for b in balances.values()) == 0
    assert balances[POOL_FEES].amount == sum(b.commission for a, b in balances.items() if a.startswith("miner:"))


async def test_batching_and_compaction_do_not_change_totals(payout_db: Database, ledger: Ledger, clock):
    rows = [(f"{login}.rig", d, at(m, s), share_hash(n)) for n, (login, d, m, s) in enumerate(
        [("alice", 0.3, 0, 1), ("bolat", 0.7, 0, 2), ("alice", 0.3, 1, 1), ("caspian", 1.1, 2, 3),
         ("alice", 0.3, 3, 1), ("bolat", 0.7, 4, 2), ("caspian", 1.1, 5, 3), ("alice", 0.3, 6, 9)])]
    await store_shares(payout_db, rows)
    c = creditor(payout_db, ledger, clock)
    for minute in (3, 5, 7, 9):                                     # credit in several runs as time passes
        clock.moment = datetime.fromtimestamp(at(minute) / 1e6 + 120, UTC)
        await c.credit_once()
    # Compaction folds old shares into worker_stats_minute: already credited, nothing changes.
    await compact(payout_db, datetime.fromtimestamp(at(4) / 1e6, UTC))
    clock.advance(minutes=1)
    assert await c.credit_once() is None
    per_login: dict[str, float] = {}
    for worker, d, _, _ in rows:
        per_login[worker.split(".")[0]] = per_login.get(worker.split(".")[0], 0) + d
    one_run = {login: sum(schemes.pps_value_usat(d, 1000.0, RATE.block_value_sats)
                          for w, d, _, _ in rows if w.startswith(login)) for login in per_login}
    assert await available(ledger) == {login: schemes.pps_increment(0, v, 150).net for login, v in one_run.items()}


async def test_compacted_minutes_are_credited_and_spilling_defers(payout_db: Database, ledger: Ledger, clock):
    await store_shares(payout_db, [("alice.rig", 1.0, at(0, 1), share_hash(1)), ("alice.rig", 1.0, at(0, 2),
                                                                                    share_hash(2))])
    await compact(payout_db, datetime.fromtimestamp(at(1) / 1e6, UTC))      # folded before any credit
    clock.moment = datetime.fromtimestamp(at(10) / 1e6, UTC)
    spilling = [True]
    c = creditor(payout_db, ledger, clock, settled=lambda: not spilling[0])
    assert await c.credit_once() is None                            # shares still on their way
    spilling[0] = False
    assert (await c.credit_once()).minutes == 1
    assert await available(ledger) == expected_net({"alice": 2.0})


async def test_fpps_rate_adds_the_mean_fees_of_recent_templates():
    chain = SimulatedChain(tx_count=3, refresh_s=3600, halving_interval=150)
    pps = TemplateRates(lambda: chain.template, fpps=False)
    fpps = TemplateRates(lambda: chain.template, fpps=True, fee_window=2)
    fees = []
    for _ in range(3):
        fees.append(sum(tx.fee for tx in chain.template.transactions))
        subsidy = chain.template.coinbasevalue - fees[-1]
        assert (await pps()).block_value_sats == subsidy
        assert (await fpps()).block_value_sats == subsidy + sum(fees[-2:]) // len(fees[-2:])
        chain.mine_foreign(1)
    rate = await fpps()
    assert rate.height == chain.tip_height + 1 and rate.network_difficulty > 0
