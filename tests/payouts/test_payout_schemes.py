"""Every scheme conserves satoshis exactly, for random share histories and rewards, and PPLNS
matches a brute-force reference that knows nothing of the implementation's shortcuts."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payouts import schemes
from payouts.payout_plan import Deposit, plan_item

LOGINS = st.sampled_from(["alice", "bolat", "caspian", "dana", "erlan", "zhanna"])
# Difficulties as a pool sees them: vardiff floats from CPU-miner tiny to ASIC large, some repeated.
DIFFICULTY = st.one_of(st.sampled_from([1e-6, 0.001, 1.0, 65536.0, 1e6]),
                       st.floats(min_value=1e-8, max_value=1e9, allow_nan=False, allow_infinity=False))
HISTORY = st.lists(st.tuples(LOGINS, DIFFICULTY), min_size=0, max_size=60)
REWARD = st.integers(min_value=0, max_value=21_000_000 * 100_000_000)
FEE_BPS = st.integers(min_value=0, max_value=9_999)


def reference_pplns(reward: int, fee_bps: int, history_oldest_first, window: Fraction) -> dict[str, int]:
    """Brute force: expand every share into its exact value, take the newest ones until the window is
    full, then hand out satoshi by satoshi... by the stated rule, written the obvious way."""
    taken: dict[str, Fraction] = {}
    left = window
    for login, difficulty in reversed(history_oldest_first):
        if left <= 0:
            break
        part = min(Fraction(difficulty), left)
        taken[login] = taken.get(login, Fraction(0)) + part
        left -= part
    fee = reward * fee_bps // 10_000
    net = reward - fee
    if not taken:
        return {}
    total = sum(taken.values())
    exact = {login: net * w / total for login, w in taken.items()}
    credits = {login: int(q) for login, q in exact.items()}          # floor: q >= 0
    order = sorted(exact, key=lambda login: (-(exact[login] - credits[login]), login))
    for login in order[:net - sum(credits.values())]:
        credits[login] += 1
    return credits


@settings(max_examples=300, deadline=None)
@given(HISTORY, REWARD, FEE_BPS, st.floats(min_value=1e-9, max_value=1e7), st.sampled_from([0.5, 1.0, 2.0, 10.0]))
def test_pplns_conserves_and_matches_brute_force(history, reward, fee_bps, network_difficulty, factor):
    window = schemes.pplns_window(network_difficulty, factor)
    dist = schemes.pplns(reward, fee_bps, list(reversed(history)), window)
    assert dist.conserved()
    assert sum(dist.credits.values()) + dist.fee + dist.unallocated == reward
    assert dist.credits == reference_pplns(reward, fee_bps, history, window)


@settings(max_examples=200, deadline=None)
@given(HISTORY, REWARD, FEE_BPS)
def test_prop_and_solo_conserve(history, reward, fee_bps):
    prop = schemes.prop(reward, fee_bps, history)
    assert prop.conserved() and sum(prop.credits.values()) + prop.pool_sats == reward
    if history:
        weights: dict[str, Fraction] = {}
        for login, d in history:
            weights[login] = weights.get(login, Fraction(0)) + Fraction(d)
        # no one is more than one satoshi away from their exact proportional part
        whole = sum(weights.values())
        for login, sats in prop.credits.items():
            assert abs(sats - (reward - prop.fee) * weights[login] / whole) < 1
    finder = history[-1][0] if history else None
    solo = schemes.solo(reward, fee_bps, finder)
    assert solo.conserved() and sum(solo.credits.values()) + solo.pool_sats == reward
    if finder:
        assert solo.credits == {finder: reward - solo.fee} and solo.commissions == {finder: solo.fee}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LOGINS, DIFFICULTY), min_size=1, max_size=40), FEE_BPS,
       st.floats(min_value=1e-3, max_value=1e14), st.integers(min_value=1, max_value=50 * 100_000_000),
       st.integers(min_value=0, max_value=10**6), st.data())
def test_pps_and_fpps_conserve_whatever_the_batching(shares, fee_bps, network_difficulty, subsidy, fees, data):
    """Crediting the same shares in any batches gives the same totals, and every batch moves exactly
    gross = net + commission out of the pool's PPS balance. FPPS is PPS at subsidy + expected fees."""
    for block_value in (subsidy, subsidy + schemes.expected_fees([fees, fees // 2, 3 * fees])):
        values = [(login, schemes.pps_value_usat(d, network_difficulty, block_value)) for login, d in shares]
        cuts = sorted(data.draw(st.sets(st.integers(0, len(values)), max_size=5)))
        cumulative: dict[str, int] = {}
        totals = {"gross": 0, "net": 0, "commission": 0}
        for start, end in zip([0] + cuts, cuts + [len(values)]):
            batch: dict[str, int] = {}
            for login, value in values[start:end]:
                batch[login] = batch.get(login, 0) + value
            for login, added in batch.items():
                before = cumulative.get(login, 0)
                cumulative[login] = before + added
                credit = schemes.pps_increment(before, before + added, fee_bps)
                assert credit.gross == credit.net + credit.commission and min(credit.net, credit.commission) >= 0
                for key in totals:
                    totals[key] += getattr(credit, key)
        one_batch = {login: sum(v for l, v in values if l == login) for login, _ in values}
        expected = [schemes.pps_increment(0, v, fee_bps) for v in one_batch.values()]
        assert totals == {"gross": sum(c.gross for c in expected), "net": sum(c.net for c in expected),
                          "commission": sum(c.commission for c in expected)}


def test_largest_remainder_rule_by_example():
    # 10 sats over three equal weights: 3 each, the one left over to the first login in code-point order
    assert schemes.largest_remainder(10, {"bolat": 1, "alice": 1, "Zed": 1}) == {"Zed": 4, "alice": 3, "bolat": 3}
    # the largest fractional part wins before order does
    assert schemes.largest_remainder(5, {"a": Fraction(1, 3), "b": Fraction(2, 3)}) == {"a": 2, "b": 3}
    dist = schemes.distribute(312_500_000, 100, {"alice": 3, "bolat": 1})
    assert dist.fee == 3_125_000 and dist.credits == {"alice": 232_031_250, "bolat": 77_343_750}
    assert dist.commissions == {"alice": 2_343_750, "bolat": 781_250}
    # docs/payouts.md's worked example: the one satoshi left goes to the tie's first login
    doc = schemes.distribute(312_512_345, 100, {"alice": 3, "bolat": 1})
    assert (doc.fee, doc.credits) == (3_125_123, {"alice": 232_040_417, "bolat": 77_346_805})
    empty = schemes.distribute(1000, 100, {})
    assert empty.credits == {} and empty.fee == 10 and empty.unallocated == 990


def test_pplns_counts_only_the_part_of_the_edge_share_inside_the_window():
    newest_first = [("alice", 1.0), ("bolat", 2.0), ("caspian", 5.0)]
    assert schemes.pplns_weights(newest_first, Fraction(4)) == {"alice": 1, "bolat": 2, "caspian": 1}
    with pytest.raises(ValueError):
        schemes.pplns_weights(newest_first, Fraction(0))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=546, max_value=10**10), st.integers(min_value=0, max_value=10**8),
       st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000))
def test_exchange_split_conserves_and_honours_the_minimum(amount, commission, chosen_bps, min_bps):
    commission = min(commission, amount)
    item = plan_item("alice", "KZ-1", __import__("datetime").date(2025, 1, 1), amount, commission, "bcrt1qwallet",
                     Deposit("aifc-x", "bcrt1qexchange", chosen_bps), ["aifc-x"], min_bps, 546)
    assert item.wallet_sats + item.exchange_sats == amount
    assert item.exchange_sats * 10_000 >= amount * max(chosen_bps, min_bps)
    assert all(s == 0 or s >= 546 for s in (item.wallet_sats, item.exchange_sats))
    assert sum(part[3] for part in item.parts()) == commission
    not_eligible = plan_item("alice", "KZ-1", item.licence_issued, amount, commission, "bcrt1qwallet",
                             Deposit("offshore", "bcrt1qexchange", 5000), ["aifc-x"], min_bps, 546)
    assert not_eligible.exchange_sats == 0 and "not eligible" in not_eligible.note
