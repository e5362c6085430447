"""The monthly energy report (`kzpool energy report --month YYYY-MM`): per miner the estimated kWh,
its quota, the hours it mined outside its allotted schedule (should be zero), and the digital
mining fee estimate from the dated rate table. Months are Kazakhstan calendar months (UTC+5).

Computed from the database on demand (EnergyAccountant.compute, read only), so it is the same
whichever node runs it and whether or not the periodic accounting ran.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from pool.db import Database

from .energy import FeeRate, fee_rate, kz_month_bounds
from .energy_accounting import EnergyAccountant, HourEnergy, datacentres_of
from .power_plan import ElectricityPlan
from .schedule import kz_hour

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
