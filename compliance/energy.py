"""Energy estimated from accepted work, monthly quotas, and the digital mining fee rate table.

The pool cannot meter a miner's electricity; it can count the work the miner proved. A share at
pool difficulty d stands for d * 2**32 hashes on average (difficulty 1 = the 0xFFFF * 2**208 target);
at a declared efficiency of E joules per terahash those hashes cost hashes / 1e12 * E joules, and
a kWh is 3.6e6 J. Over an hour of shares the estimate's error is the share count's Poisson noise
(1/sqrt(n)), plus whatever the declared efficiency is off by.

The fee (Tax Code, per kWh used for mining) changed in 2023 and again in 2024 (KZ-REGULATION.md),
so it is a dated table in the config (`[energy] fee_rates`), shipped with the known periods. Where
several rows apply to a miner (e.g. grid power and no meter), the highest rate wins, as the 2023
rules say; it is an estimate for the operator, not a tax return.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from .power_plan import POWER_SOURCES, ElectricityPlan, FeeBasis, setting
from .standing import KZ_TIME

HASHES_PER_DIFFICULTY = 2 ** 32
JOULES_PER_KWH = 3.6e6


def hashes_for(difficulty_sum: float) -> float:
    return difficulty_sum * HASHES_PER_DIFFICULTY


def kwh_for(difficulty_sum: float, j_per_th: float) -> float:
    joules = hashes_for(difficulty_sum) / 1e12 * j_per_th
    return joules / JOULES_PER_KWH


# ---- months in Kazakhstan time ---------------------------------------------------------------------
def parse_month(text: str) -> tuple[int, int]:
    try:
        year, month = (int(part) for part in text.split("-"))
        date(year, month, 1)
    except ValueError:
        raise ValueError(f"month {text!r}: expected YYYY-MM") from None
    return year, month


def kz_month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of a Kazakhstan calendar month, in UTC."""
    start = datetime(year, month, 1, tzinfo=KZ_TIME)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=KZ_TIME)
    return start.astimezone(UTC), end.astimezone(UTC)


def kz_month_of(moment: datetime) -> tuple[int, int]:
    local = moment.astimezone(KZ_TIME)
    return local.year, local.month


# ---- quotas -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QuotaState:
    month: tuple[int, int]
    used_by_login: Mapping[str, float]
    used_by_datacentre: Mapping[str, float]
    exhausted: Mapping[str, str]           # scope key ("login:x" / "datacentre:y") -> text

    def reason_for(self, login: str, datacentre: str | None) -> str | None:
        return self.exhausted.get(f"login:{login}") or (
            self.exhausted.get(f"datacentre:{datacentre}") if datacentre else None)


def quota_state(plan: ElectricityPlan, month: tuple[int, int], used_by_login: Mapping[str, float],
                datacentre_of: Mapping[str, str]) -> QuotaState:
    """Which logins and data centres used up their monthly quota. A data centre's quota is shared
    by every miner in it (subtype II miners claim no quota of their own)."""
    by_dc: dict[str, float] = {}
    for login, kwh in used_by_login.items():
        dc = datacentre_of.get(login, "")
        if dc:
            by_dc[dc] = by_dc.get(dc, 0.0) + kwh
    exhausted: dict[str, str] = {}
    label = f"{month[0]:04d}-{month[1]:02d}"
    for login, profile in plan.miners.items():
        used = used_by_login.get(login, 0.0)
        if profile.quota_kwh is not None and used >= profile.quota_kwh:
            exhausted[f"login:{login}"] = (f"the {label} energy quota of login {login} ({profile.quota_kwh:g} kWh) "
                                           f"is used up ({used:.1f} kWh)")
    for dc, profile in plan.datacentres.items():
        used = by_dc.get(dc, 0.0)
        if profile.quota_kwh is not None and used >= profile.quota_kwh:
            exhausted[f"datacentre:{dc}"] = (f"the {label} energy quota of data centre {dc} "
                                             f"({profile.quota_kwh:g} kWh) is used up ({used:.1f} kWh)")
    return QuotaState(month, dict(used_by_login), by_dc, exhausted)


# ---- the fee rate table ---------------------------------------------------------------------------
FEE_SOURCES = (*POWER_SOURCES, "unmetered", "any")


@dataclass(frozen=True, slots=True)
class FeeRate:
    valid_from: date
    valid_until: date | None        # exclusive; None: until the table says otherwise
    source: str                     # one of FEE_SOURCES
    tenge_per_kwh: float
    price_from: float = 0.0         # average price band, tenge per kWh, [price_from, price_until)
    price_until: float | None = None
    note: str = ""

    def applies(self, day: date, attributes: set[str], price: float) -> bool:
        return (self.valid_from <= day and (self.valid_until is None or day < self.valid_until)
                and self.source in attributes and self.price_from <= price
                and (self.price_until is None or price < self.price_until))


def _rates_2023() -> list[FeeRate]:
    start, end = date(2023, 1, 1), date(2024, 1, 1)
    law = "Law 135-VII of 11 July 2022"
    # Only the ends of the scale are confirmed (KZ-REGULATION.md); the steps between are as
    # reported for the law and must be checked against the Tax Code before relying on them.
    bands = [(0, 10, 25), (10, 12, 18), (12, 14, 15), (14, 16, 10), (16, 18, 7), (18, 20, 5), (20, 22, 3),
             (22, 24, 2), (24, None, 1)]
    rows = [FeeRate(start, end, "grid", rate, low, high,
                    f"{law}; average price band" + ("" if rate in (25, 1) else " (step not confirmed)"))
            for low, high, rate in bands]
    rows += [FeeRate(start, end, "unmetered", 25, note=f"{law}: no metering devices"),
             FeeRate(start, end, "own_generation", 10, note=f"{law}: own generation"),
             FeeRate(start, end, "own_renewable", 1, note=f"{law}: own renewables"),
             FeeRate(start, end, "renewable", 1, note=f"{law}: renewables")]
    return rows


def _rates_2024() -> list[FeeRate]:
    start, law = date(2024, 1, 1), "Law 45-VIII of 12 December 2023 (2026 Tax Code rate not confirmed)"
    return ([FeeRate(start, None, s, 2, note=f"{law}: flat rate") for s in ("grid", "own_generation", "unmetered")]
            + [FeeRate(start, None, s, 1, note=f"{law}: renewables or off-grid generation")
               for s in ("renewable", "own_renewable", "off_grid")])


DEFAULT_FEE_RATES: tuple[FeeRate, ...] = (
    FeeRate(date(2022, 1, 1), date(2023, 1, 1), "any", 1, note="Tax Code as of 2022: flat rate"),
    *_rates_2023(), *_rates_2024())


def fee_rate(rates: Iterable[FeeRate], day: date, basis: FeeBasis) -> FeeRate | None:
    """The highest rate that applies on a KZ date; an unknown average price counts as the cheapest
    power (the law's highest band), so the estimate never comes out low for lack of data."""
    attributes = {*basis.sources, "any"} | (set() if basis.metered else {"unmetered"})
    price = basis.avg_price_tenge if basis.avg_price_tenge is not None else 0.0
    applicable = [r for r in rates if r.applies(day, attributes, price)]
    return max(applicable, key=lambda r: r.tenge_per_kwh) if applicable else None


def fee_rates_from_settings(entries: Sequence[Any] | None) -> tuple[FeeRate, ...]:
    """`[energy] fee_rates`: tables with from, until ("" open), source, tenge_per_kwh, price_from,
    price_until (0 or missing: no upper bound), note. None or empty: the shipped table."""
    if not entries:
        return DEFAULT_FEE_RATES
    out = []
    for i, entry in enumerate(entries):
        where = f"energy.fee_rates[{i}]"
        try:
            # A typed config spells the TOML key `from` as the field `from_` (a Python keyword).
            valid_from = date.fromisoformat(str(setting(entry, "from", None) or setting(entry, "from_", "")))
            until_text = str(setting(entry, "until", "") or "")
            valid_until = date.fromisoformat(until_text) if until_text else None
        except ValueError:
            raise ValueError(f"{where}: from/until must be YYYY-MM-DD") from None
        source = str(setting(entry, "source", "any"))
        rate = float(setting(entry, "tenge_per_kwh", -1))
        price_until = float(setting(entry, "price_until", 0) or 0)
        if source not in FEE_SOURCES:
            raise ValueError(f"{where}.source: {source!r} is not one of {list(FEE_SOURCES)}")
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"{where}.tenge_per_kwh must be a number >= 0")
        if valid_until is not None and valid_until <= valid_from:
            raise ValueError(f"{where}: until must be after from")
        out.append(FeeRate(valid_from, valid_until, source, rate, float(setting(entry, "price_from", 0) or 0),
                           price_until or None, str(setting(entry, "note", ""))))
    return tuple(out)
