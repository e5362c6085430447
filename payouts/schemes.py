"""Payout schemes as pure functions: integer satoshis out, exact rational weights in.

Share difficulties are floats; each is taken at its exact binary value (`Fraction(d)`), so weights
are exact and no rounding happens before the one documented rule below.

The remainder rule (every scheme that splits a block):
1. The pool's commission is `fee = floor(reward * fee_bps / 10000)`: rounding favours the miners.
2. `net = reward - fee` is split by weight with the largest-remainder rule: each login first gets
   `floor(net * w / W)`; the satoshis left over (fewer than the number of logins) go one each to the
   logins with the largest fractional parts, ties broken by login in ascending code-point order.
3. The commission is split over the same weights by the same rule, so each credit carries the
   commission charged on it (the distribution report shows it per miner).
Hence `sum(credits) + fee + unallocated == reward` exactly, for every input.

PPS and FPPS credit shares, not blocks: the value of shares is accumulated per login in
micro-satoshis (floored once per worker-minute, see payouts/pps.py) and credited as the change of
`floor(cumulative / 10^6)`; the commission is the change of `floor(gross_sats * fee_bps / 10000)`
over the cumulative gross, so splitting the same shares into any batches credits the same totals.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

BPS = 10_000
USAT_PER_SAT = 1_000_000
Weight = Fraction | int


@dataclass(frozen=True, slots=True)
class Distribution:
    """Who is credited what from one block. `unallocated` is net reward with no share to go to
    (an empty window): it stays with the pool, never vanishes."""
    reward: int
    fee: int
    credits: dict[str, int] = field(default_factory=dict)        # login -> net sats
    commissions: dict[str, int] = field(default_factory=dict)    # login -> commission charged
    unallocated: int = 0

    @property
    def pool_sats(self) -> int:
        return self.fee + self.unallocated

    def conserved(self) -> bool:
        return (sum(self.credits.values()) + self.fee + self.unallocated == self.reward
                and sum(self.commissions.values()) in (self.fee, 0)
                and all(v >= 0 for v in (*self.credits.values(), *self.commissions.values())))


def fee_of(amount: int, fee_bps: int) -> int:
    if amount < 0 or not 0 <= fee_bps < BPS:
        raise ValueError("amount must be >= 0 and fee_bps in 0..9999")
    return amount * fee_bps // BPS


def largest_remainder(total: int, weights: Mapping[str, Weight]) -> dict[str, int]:
    """Split `total` sats by `weights` (rule 2 above). Logins with zero weight get nothing."""
    if total < 0:
        raise ValueError("total must be >= 0")
    positive = {k: Fraction(w) for k, w in weights.items() if w > 0}
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must be >= 0")
    whole = sum(positive.values(), Fraction(0))
    if not positive:
        raise ValueError("no positive weight to split by")
    shares: dict[str, int] = {}
    remainders: list[tuple[Fraction, str]] = []
    for login, w in positive.items():
        exact = total * w / whole
        shares[login] = exact.numerator // exact.denominator
        remainders.append((exact - shares[login], login))
    left = total - sum(shares.values())
    remainders.sort(key=lambda item: (-item[0], item[1]))
    for _, login in remainders[:left]:
        shares[login] += 1
    return shares


def distribute(reward: int, fee_bps: int, weights: Mapping[str, Weight]) -> Distribution:
    """Rules 1-3 for a reward and per-login weights."""
    fee = fee_of(reward, fee_bps)
    net = reward - fee
    if not any(w > 0 for w in weights.values()):
        return Distribution(reward, fee, unallocated=net)
    credits = largest_remainder(net, weights)
    commissions = largest_remainder(fee, weights)
    return Distribution(reward, fee, credits, commissions)


def pplns_weights(shares_newest_first: Iterable[tuple[str, Weight | float]],
                  window: Fraction) -> dict[str, Fraction]:
    """Per-login difficulty inside the last `window` units of share difficulty, walking back from
    the block's own share; the share that crosses the window's edge counts only for its part inside."""
    if window <= 0:
        raise ValueError("window must be > 0")
    left = Fraction(window)
    weights: dict[str, Fraction] = {}
    for login, difficulty in shares_newest_first:
        take = min(Fraction(difficulty), left)
        if take > 0:
            weights[login] = weights.get(login, Fraction(0)) + take
        left -= take
        if left == 0:
            break
    return weights


def pplns(reward: int, fee_bps: int, shares_newest_first: Iterable[tuple[str, Weight | float]],
          window: Fraction) -> Distribution:
    return distribute(reward, fee_bps, pplns_weights(shares_newest_first, window))


def pplns_window(network_difficulty: float, factor: float) -> Fraction:
    return Fraction(network_difficulty) * Fraction(factor)


def prop(reward: int, fee_bps: int, round_shares: Iterable[tuple[str, Weight | float]]) -> Distribution:
    """Proportional: every share of the round (since the previous block) by its difficulty."""
    weights: dict[str, Fraction] = {}
    for login, difficulty in round_shares:
        weights[login] = weights.get(login, Fraction(0)) + Fraction(difficulty)
    return distribute(reward, fee_bps, weights)


def solo(reward: int, fee_bps: int, finder: str | None) -> Distribution:
    """The finder takes the block, less the commission."""
    return distribute(reward, fee_bps, {finder: 1} if finder else {})


# -- PPS / FPPS ------------------------------------------------------------------------------------

def pps_value_usat(difficulty: Weight | float, network_difficulty: float, block_value_sats: int) -> int:
    """Expected value of `difficulty` worth of shares in micro-satoshis, floored: the chance that
    one hash of difficulty d finds a block is d / D, and a block is worth `block_value_sats`."""
    exact = Fraction(difficulty) * block_value_sats * USAT_PER_SAT / Fraction(network_difficulty)
    return exact.numerator // exact.denominator


@dataclass(frozen=True, slots=True)
class PpsCredit:
    gross: int          # sats out of the pool's PPS balance
    net: int            # sats to the miner
    commission: int     # sats to the pool's fees: gross == net + commission


def pps_increment(cumulative_before_usat: int, cumulative_after_usat: int, fee_bps: int) -> PpsCredit:
    """The credit for a login whose cumulative PPS value moved from `before` to `after`."""
    if cumulative_after_usat < cumulative_before_usat:
        raise ValueError("cumulative PPS value never decreases")
    g0, g1 = cumulative_before_usat // USAT_PER_SAT, cumulative_after_usat // USAT_PER_SAT
    f0, f1 = fee_of(g0, fee_bps), fee_of(g1, fee_bps)
    return PpsCredit(g1 - g0, (g1 - f1) - (g0 - f0), f1 - f0)


def expected_fees(recent_fees: Sequence[int]) -> int:
    """FPPS: the mean transaction fees of recent templates, floored (0 with no sample yet)."""
    return sum(recent_fees) // len(recent_fees) if recent_fees else 0
