"""The ledger and the share windows on both databases: postings balance, count once, cannot be
edited; the PPLNS window and the PROP round read from the shares table equal a brute-force
reference over the same shares (ties in time, hour and minute edges, gaps)."""
from __future__ import annotations

import random
from fractions import Fraction

import pytest
from sqlalchemy import text

from payouts.ledger import CHAIN_COINBASE, Ledger, Line, Posting, miner_account
from payouts.share_windows import ShareKey, pplns_window, round_window
from pool.db import Database

from payout_fixtures import (audit_records, clock, ledger, payout_db, share_hash,  # noqa: F401
                             store_shares, worker_ids)

HOUR_US = 3_600_000_000


async def test_postings_balance_count_once_and_cannot_be_edited(payout_db: Database, ledger: Ledger,
                                                                audit_records: list):
    found = Posting("block:ab:found", "block_found", (
        Line(CHAIN_COINBASE, -1000), Line(miner_account("alice", "immature"), 990, 10),
        Line("pool:fees:immature", 10)), {"height": 7})
    assert await ledger.post(found) is True
    assert await ledger.post(found) is False                  # same ref: a retried step counts once
    with pytest.raises(ValueError, match="sum to 1"):
        Posting("bad", "x", (Line("a", 1), Line("b", 0)))
    with pytest.raises(TypeError):
        Posting("float", "x", (Line("a", 0.5), Line("b", -0.5)))      # type: ignore[arg-type]
    balances = await ledger.balances()
    assert balances[CHAIN_COINBASE].amount == -1000
    assert balances[miner_account("alice", "immature")].amount == 990
    assert balances[miner_account("alice", "immature")].commission == 10
    assert sum(b.amount for b in balances.values()) == 0
    assert await ledger.unbalanced() == []
    assert [kind for kind, _ in audit_records] == ["ledger"]
    assert audit_records[0][1]["ref"] == "block:ab:found" and audit_records[0][1]["entries"][1] == [
        "miner:alice:immature", 990, 10]
    for statement in ("UPDATE ledger_entries SET amount_sats = 0", "DELETE FROM ledger_txns"):
        with pytest.raises(Exception, match="append-only"):
            async with payout_db.engine.begin() as conn:
                await conn.execute(text(statement))
    async with ledger.write() as writer:                       # a failed transaction posts nothing
        await writer.post(Posting("p2", "x", (Line("a", 5), Line("b", -5))))
        assert await writer.has("p2")
    with pytest.raises(RuntimeError):
        async with ledger.write() as writer:
            await writer.post(Posting("p3", "x", (Line("a", 5), Line("b", -5))))
            raise RuntimeError("crash before commit")
    assert await ledger.lines("p3") == () and len(audit_records) == 2


def reference_window(shares, end, window=None, start=None):
    """shares: (key, login, difficulty); newest first from `end`, exact."""
    ordered = sorted((s for s in shares if s[0] <= end and (start is None or s[0] > start)), reverse=True)
    weights: dict[str, Fraction] = {}
    left = window
    for _, login, difficulty in ordered:
        take = Fraction(difficulty) if left is None else min(Fraction(difficulty), left)
        weights[login] = weights.get(login, Fraction(0)) + take
        if left is not None:
            left -= take
            if left == 0:
                break
    return {k: v for k, v in weights.items() if v}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_windows_from_the_database_match_the_brute_force_reference(payout_db: Database, seed: int):
    rng = random.Random(seed)
    names = ["alice.rig1", "alice.rig2", "bolat.s9", "caspian.x", "dana.cpu"]
    ids = await worker_ids(payout_db, names)
    base_us = 1_780_000_000 * 1_000_000
    times = []
    for _ in range(400):
        # clustered over 6 hours with gaps, repeated microseconds (ties) and minute/hour edges
        t = base_us + rng.choice([0, HOUR_US, 3 * HOUR_US, 5 * HOUR_US]) + rng.randrange(0, 2 * HOUR_US, 250_000)
        times.append(t if rng.random() > 0.1 else (times[-1] if times else t))
    rows = [(rng.choice(names), rng.choice([1e-6, 0.001, 0.5, 1.0, 2.0, 3.7, 64.0]), t, share_hash(seed * 1000 + n))
            for n, t in enumerate(times)]
    await store_shares(payout_db, rows)
    keyed = [(ShareKey(t, h, ids[w]), w.partition(".")[0], d) for w, d, t, h in rows]
    ordered = sorted(k for k, _, _ in keyed)
    total = sum(Fraction(d) for _, _, d in keyed)
    async with payout_db.engine.connect() as conn:
        for end in (ordered[-1], ordered[len(ordered) // 2], ordered[37]):
            for window in (Fraction(1, 10**7), Fraction(7, 2), total / 3, total * 2):
                got = await pplns_window(conn, end, window)
                assert got.weights == reference_window(keyed, end, window), (end, window)
                assert got.filled == (sum(got.weights.values()) == window)
        for start, end in ((None, ordered[100]), (ordered[100], ordered[250]), (ordered[250], ordered[251])):
            got = await round_window(conn, start, end)
            assert got.weights == reference_window(keyed, end, None, start)
