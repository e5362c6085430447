"""The hourly grid-power volume rule (Law No. 193-VII: grid power only in the hours *and volumes*
allotted; KZ-REGULATION.md, Electricity).

A day-ahead row (compliance/schedule.py) allots `allowed_kw` to a login or a data centre for one
Kazakhstan hour: at most allowed_kw x 1 h of grid energy (kWh) in that hour. The allotment a login
draws on is the one `ScheduleBook.allotment` names (the login's own rows for that date, else its
data centre's); a data centre's allotment is shared by every login it governs, their energies add
up against it. Logins under standing hours only (no day-ahead rows) have no volume limit.

The energy is the estimate of compliance/energy.py from the accepted, stored shares (what the
miner was credited for), summed per login for the current hour by `EnergyAccountant.update()`
(`HourUsage`). `judge_volumes` compares each allotment's energy with its volume:

    used up  <=>  used_kwh >= allowed_kw x (3600 - reserve_s) / 3600

`reserve_s` (`[curtailment] volume_reserve_s`, default 0) holds back that many seconds of the
allotted power for the rule's latency. The CurtailmentEnforcer then stops work for the allotment's
logins (`hourly_volume_used_up`) until the next hour whose allotment is not used up.

Latency: the estimate is as old as the last accountant update (`[energy] update_s`, 60 s) plus the
enforcer's poll (`[curtailment] poll_s`, 1 s); in `kzpool run --workers N`, workers other than 0
read the totals worker 0 stored, so up to 2 x update_s + poll_s. A scope drawing P kW can therefore
overrun its allotment by at most P x latency / 3600 kWh, less allowed_kw x reserve_s / 3600
(reserve_s >= the latency removes the overrun of a scope that draws no more than its allotted
power). Miners keep hashing the withheld job until they are disconnected (`grace_s`), but those
shares are refused and not counted.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from .schedule import Allotment, ScheduleBook, kz_hour

HOUR_S = 3600
MAX_RESERVE_S = 1800.0


@dataclass(frozen=True, slots=True)
class HourUsage:
    """Estimated grid energy per login in one hour so far, from stored shares."""
    hour_s: int                              # UTC (= Kazakhstan) hour start, unix seconds
    used_by_login: Mapping[str, float]       # kWh
    as_of: datetime                          # when the estimate was computed


@dataclass(frozen=True, slots=True)
class ScopeVolume:
    """One allotment in the current hour and the energy its logins used against it."""
    scope: str                               # "login" | "datacentre"
    target: str
    allowed_kw: float
    threshold_kwh: float                     # where work stops: the volume less the reserve
    used_kwh: float
    logins: tuple[str, ...]                  # the logins drawing on it (with energy or registered)

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.target}"

    @property
    def allotted_kwh(self) -> float:
        return self.allowed_kw * 1.0

    @property
    def used_up(self) -> bool:
        return self.allowed_kw > 0 and self.used_kwh >= self.threshold_kwh


def kwh_text(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 or value == 0 else f"{value:.3g}"


@dataclass(frozen=True, slots=True)
class VolumeState:
    day: date                                # Kazakhstan date and hour judged
    hour: int
    hour_s: int
    reserve_s: float
    as_of: datetime | None                   # the estimate's time; None: no estimate for this hour
    scopes: Mapping[str, ScopeVolume] = field(default_factory=dict)

    @property
    def exhausted(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, v in self.scopes.items() if v.used_up))

    def used_up(self, allotment: Allotment | None) -> ScopeVolume | None:
        if allotment is None:
            return None
        volume = self.scopes.get(allotment.key)
        return volume if volume is not None and volume.used_up else None

    def describe(self, volume: ScopeVolume) -> str:
        held = (f", work stops at {kwh_text(volume.threshold_kwh)} kWh ({self.reserve_s:g} s held back)"
                if self.reserve_s else "")
        return (f"the grid power allotted to day-ahead {volume.key} for {self.hour:02d}:00-{self.hour + 1:02d}:00 "
                f"UTC+5 on {self.day.isoformat()} ({volume.allowed_kw:g} kW x 1 h = {kwh_text(volume.allotted_kwh)} "
                f"kWh) is used up: {kwh_text(volume.used_kwh)} kWh estimated from accepted work{held}")

    def audit_details(self, volume: ScopeVolume) -> dict[str, str | int]:
        return {"hour": f"{self.day.isoformat()} {self.hour:02d}:00 UTC+5", "allowed_kw": f"{volume.allowed_kw:g}",
                "allotted_kwh": kwh_text(volume.allotted_kwh), "threshold_kwh": kwh_text(volume.threshold_kwh),
                "used_kwh": kwh_text(volume.used_kwh), "reserve_s": f"{self.reserve_s:g}",
                "estimated_at": self.as_of.astimezone(UTC).isoformat() if self.as_of else "",
                "logins": len(volume.logins)}


def hour_start_s(moment: datetime) -> int:
    return int(moment.timestamp()) // HOUR_S * HOUR_S


def judge_volumes(book: ScheduleBook, moment: datetime, usage: HourUsage | None,
                  datacentre_of: Mapping[str, str], reserve_s: float = 0.0,
                  logins: Iterable[str] = (), unallotted: bool = False) -> VolumeState:
    """Every day-ahead allotment of the hour of `moment` with the energy its logins used in that
    hour. An estimate of another hour (the accountant has not run since the hour turned) counts as
    nothing used yet. `unallotted` (the report) also lists day-ahead scopes at 0 kW whose logins
    used energy in that hour anyway."""
    if not 0 <= reserve_s <= MAX_RESERVE_S:
        raise ValueError(f"curtailment.volume_reserve_s must be in [0, {MAX_RESERVE_S:g}]")
    day, hour = kz_hour(moment)
    hour_s = hour_start_s(moment)
    fresh = usage if usage is not None and usage.hour_s == hour_s else None
    used = fresh.used_by_login if fresh is not None else {}
    sums: dict[str, tuple[Allotment, float, list[str]]] = {
        a.key: (a, 0.0, []) for a in book.allotments_at(moment) if a.allowed_kw > 0}
    for login in sorted({*datacentre_of, *used, *logins}):
        allotment = book.allotment(login, datacentre_of.get(login) or None, moment)
        if allotment is None or (allotment.allowed_kw <= 0 and not unallotted):
            continue
        _, total, members = sums.setdefault(allotment.key, (allotment, 0.0, []))
        members.append(login)
        sums[allotment.key] = (allotment, total + used.get(login, 0.0), members)
    factor = (HOUR_S - reserve_s) / HOUR_S
    scopes = {key: ScopeVolume(a.scope, a.target, a.allowed_kw, a.kwh * factor, total, tuple(members))
              for key, (a, total, members) in sums.items() if a.allowed_kw > 0 or total > 0}
    return VolumeState(day, hour, hour_s, reserve_s, fresh.as_of if fresh is not None else None, scopes)
