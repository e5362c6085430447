"""The monthly energy report (`kzpool energy report --month YYYY-MM`): per miner the estimated kWh,
its quota, the hours it mined outside its allotted schedule (should be zero), and the digital
mining fee estimate from the dated rate table. Months are Kazakhstan calendar months (UTC+5).

With `--by-hour`, the hourly volume check instead: per Kazakhstan hour and day-ahead allotment
(login or data centre, by the schedule's precedence), the allotted power, its volume (allowed_kw x
1 h), the energy its logins used, and how far it was exceeded (`over_kwh`), judged by the same code
as the pool (compliance/hourly_volume.py). The pool stops an allotment's logins once its volume is
reached, late by at most the rule's latency, so `over_kwh` should stay within a minute or two of
the allotment's draw.

Computed from the database on demand (EnergyAccountant.compute, read only), so it is the same
whichever node runs it and whether or not the periodic accounting ran.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

from pool.db import Database

from .energy import FeeRate, fee_rate, kz_month_bounds
from .energy_accounting import EnergyAccountant, HourEnergy, datacentres_of
from .hourly_volume import HourUsage, judge_volumes
from .power_plan import ElectricityPlan
from .schedule import ScheduleBook, kz_hour, load_day_ahead_kw

METHOD = ("kWh = sum(accepted share difficulty) * 2**32 hashes / 1e12 * declared J/TH / 3.6e6; "
          "fee = kWh * the highest applicable rate of the day (Kazakhstan time)")
CSV_COLUMNS = ("login", "datacentre", "shares", "j_per_th", "kwh", "quota_kwh", "datacentre_quota_kwh",
               "outside_schedule_h", "fee_tenge_per_kwh", "fee_tenge", "kwh_without_rate", "fee_note")


@dataclass(slots=True)
class MinerEnergy:
    login: str
    datacentre: str
    shares: int = 0
    j_per_th: float = 0.0
    kwh: float = 0.0
    quota_kwh: float | None = None
    datacentre_quota_kwh: float | None = None
    outside_schedule_h: float = 0.0
    fee_tenge: float = 0.0
    kwh_without_rate: float = 0.0          # energy in days the rate table has no applicable row for
    rates: set[float] = field(default_factory=set)
    notes: set[str] = field(default_factory=set)

    def fee_rate_text(self) -> str:
        if not self.rates:
            return ""
        return f"{next(iter(self.rates)):g}" if len(self.rates) == 1 else "mixed"


@dataclass(frozen=True, slots=True)
class EnergyReport:
    month: str
    generated_at: datetime
    miners: list[MinerEnergy]

    def datacentres(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.miners:
            if m.datacentre:
                out[m.datacentre] = out.get(m.datacentre, 0.0) + m.kwh
        return out


async def build_report(db: Database, plan: ElectricityPlan, rates: tuple[FeeRate, ...], year: int, month: int,
                       now: datetime | None = None) -> EnergyReport:
    start, end = kz_month_bounds(year, month)
    accountant = EnergyAccountant(db, plan)
    hours = await accountant.compute(start, end)
    async with db.engine.connect() as conn:
        dcs = await datacentres_of(conn)
    miners: dict[str, MinerEnergy] = {}
    for login in sorted({*dcs, *plan.miners, *(h.login for h in hours)}):
        dc = dcs.get(login, "")
        own, site = plan.miners.get(login), plan.datacentres.get(dc)
        miners[login] = MinerEnergy(login, dc, j_per_th=plan.j_per_th(login, dc or None),
                                    quota_kwh=own.quota_kwh if own else None,
                                    datacentre_quota_kwh=site.quota_kwh if site else None)
    for h in hours:
        _add_hour(miners[h.login], h, plan, rates)
    return EnergyReport(f"{year:04d}-{month:02d}", now or datetime.now(UTC), list(miners.values()))


def _add_hour(m: MinerEnergy, h: HourEnergy, plan: ElectricityPlan, rates: tuple[FeeRate, ...]) -> None:
    m.shares += h.shares
    m.kwh += h.kwh
    m.j_per_th = h.j_per_th
    m.outside_schedule_h += h.outside_minutes / 60.0
    day, _ = kz_hour(datetime.fromtimestamp(h.hour_s, UTC))
    rate = fee_rate(rates, day, plan.fee_basis(h.login, h.datacentre_id or None))
    if rate is None:
        m.kwh_without_rate += h.kwh
        m.notes.add(f"no fee rate for {day.isoformat()}: add one to [energy] fee_rates")
        return
    m.fee_tenge += h.kwh * rate.tenge_per_kwh
    m.rates.add(rate.tenge_per_kwh)
    if rate.note:
        m.notes.add(rate.note)


def _row(m: MinerEnergy) -> dict[str, str]:
    def number(value: float | None, places: int = 3) -> str:
        return "" if value is None else f"{value:.{places}f}"
    return {"login": m.login, "datacentre": m.datacentre, "shares": str(m.shares), "j_per_th": number(m.j_per_th, 2),
            "kwh": number(m.kwh), "quota_kwh": number(m.quota_kwh), "datacentre_quota_kwh": number(m.datacentre_quota_kwh),
            "outside_schedule_h": number(m.outside_schedule_h, 2), "fee_tenge_per_kwh": m.fee_rate_text(),
            "fee_tenge": number(m.fee_tenge, 2), "kwh_without_rate": number(m.kwh_without_rate),
            "fee_note": " | ".join(sorted(m.notes))}


def to_csv(report: EnergyReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for m in report.miners:
        writer.writerow(_row(m))
    return out.getvalue()


def to_json(report: EnergyReport) -> str:
    miners = []
    for m in report.miners:
        item = asdict(m)
        item["rates"] = sorted(m.rates)
        item["notes"] = sorted(m.notes)
        miners.append(item)
    dc_quota = {m.datacentre: m.datacentre_quota_kwh for m in report.miners if m.datacentre}
    return json.dumps({
        "month": report.month, "timezone": "UTC+05:00", "generated_at": report.generated_at.isoformat(),
        "method": METHOD, "miners": miners,
        "datacentres": [{"id": dc, "kwh": kwh, "quota_kwh": dc_quota.get(dc)}
                        for dc, kwh in sorted(report.datacentres().items())],
        "totals": {"kwh": sum(m.kwh for m in report.miners), "fee_tenge": sum(m.fee_tenge for m in report.miners),
                   "outside_schedule_h": sum(m.outside_schedule_h for m in report.miners)},
    }, indent=2, sort_keys=False) + "\n"


# ---- the hourly volume check (--by-hour) -------------------------------------------------------------
HOURLY_COLUMNS = ("date", "hour", "allotment", "allowed_kw", "allotted_kwh", "used_kwh", "over_kwh", "logins")
HOURLY_METHOD = ("per Kazakhstan hour and day-ahead allotment (the login's own rows, else its data centre's, "
                 "shared by its logins): allotted_kwh = allowed_kw x 1 h; used_kwh = the logins' kWh estimated "
                 "as above; over_kwh = max(0, used_kwh - allotted_kwh)")


@dataclass(frozen=True, slots=True)
class HourVolume:
    day: date                  # Kazakhstan date and hour
    hour: int
    allotment: str             # "login:<login>" | "datacentre:<id>"
    allowed_kw: float
    used_kwh: float
    logins: tuple[str, ...]

    @property
    def allotted_kwh(self) -> float:
        return self.allowed_kw * 1.0

    @property
    def over_kwh(self) -> float:
        return max(0.0, self.used_kwh - self.allotted_kwh)


async def build_hourly_volumes(db: Database, plan: ElectricityPlan, year: int, month: int) -> list[HourVolume]:
    """Every hour of a Kazakhstan month with a day-ahead allotment (or energy drawn on a 0 kW one)."""
    start, end = kz_month_bounds(year, month)
    hours = await EnergyAccountant(db, plan).compute(start, end)
    async with db.engine.connect() as conn:
        dcs = await datacentres_of(conn)
        kw = await load_day_ahead_kw(conn, kz_hour(start)[0], kz_hour(end - timedelta(seconds=1))[0])
    book = ScheduleBook(plan)
    book.set_day_ahead_kw(kw)
    used: dict[int, dict[str, float]] = {}
    for h in hours:
        used.setdefault(h.hour_s, {})[h.login] = h.kwh
    out: list[HourVolume] = []
    for hour_s in range(int(start.timestamp()), int(end.timestamp()), 3600):
        moment = datetime.fromtimestamp(hour_s, UTC)
        if kz_hour(moment)[0] not in kw:
            continue
        state = judge_volumes(book, moment, HourUsage(hour_s, used.get(hour_s, {}), moment), dcs, unallotted=True)
        out.extend(HourVolume(state.day, state.hour, v.key, v.allowed_kw, v.used_kwh, v.logins)
                   for _, v in sorted(state.scopes.items()))
    return out


def _hour_row(v: HourVolume) -> dict[str, str]:
    return {"date": v.day.isoformat(), "hour": str(v.hour), "allotment": v.allotment, "allowed_kw": f"{v.allowed_kw:g}",
            "allotted_kwh": f"{v.allotted_kwh:.3f}", "used_kwh": f"{v.used_kwh:.3f}", "over_kwh": f"{v.over_kwh:.3f}",
            "logins": " ".join(v.logins)}


def hourly_to_csv(volumes: list[HourVolume]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, HOURLY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for v in volumes:
        writer.writerow(_hour_row(v))
    return out.getvalue()


def hourly_to_json(volumes: list[HourVolume], month: str, generated_at: datetime | None = None) -> str:
    over = [v for v in volumes if v.over_kwh > 0]
    return json.dumps({
        "month": month, "timezone": "UTC+05:00", "generated_at": (generated_at or datetime.now(UTC)).isoformat(),
        "method": HOURLY_METHOD,
        "hours": [{"date": v.day.isoformat(), "hour": v.hour, "allotment": v.allotment, "allowed_kw": v.allowed_kw,
                   "allotted_kwh": v.allotted_kwh, "used_kwh": v.used_kwh, "over_kwh": v.over_kwh,
                   "logins": list(v.logins)} for v in volumes],
        "totals": {"allotment_hours": len(volumes), "hours_over": len(over),
                   "over_kwh": sum(v.over_kwh for v in over)},
    }, indent=2) + "\n"
