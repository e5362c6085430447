"""What each data centre and miner declared about electricity: allotted hours, monthly quota,
equipment and its efficiency, and what the mining fee depends on (power source, average price).

Built once from the `[electricity]` config section (`plan_from_settings`), plain data afterwards.
A miner's own entry wins over its data centre's, which wins over the defaults. Hours are hours of
the day in Kazakhstan time (UTC+5); a day-ahead schedule imported for a date overrides these
standing hours for that date (compliance/schedule.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ALL_DAY = (1 << 24) - 1
POWER_SOURCES = ("grid", "own_generation", "own_renewable", "renewable", "off_grid")


@dataclass(frozen=True, slots=True)
class HourSet:
    """Hours of the day (0..23, Kazakhstan time) as a 24-bit mask."""
    mask: int

    @classmethod
    def parse(cls, text: str) -> "HourSet":
        """`0-24` all day, `none` no hour, `22-24,0-7` or `1,2,3`: ranges are start-inclusive,
        end-exclusive; `22-7` wraps past midnight."""
        text = text.strip().lower()
        if text == "none":
            return cls(0)
        mask = 0
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, sep, last = part.partition("-")
            try:
                start, end = int(first), (int(last) if sep else int(first) + 1)
            except ValueError:
                raise ValueError(f"hours {text!r}: {part!r} is not HOUR or START-END") from None
            if not (0 <= start <= 23 and 0 <= end <= 24):
                raise ValueError(f"hours {text!r}: hours run 0..24")
            span = range(start, end) if start < end else [*range(start, 24), *range(0, end)]
            for hour in span:
                mask |= 1 << hour
        if not mask:
            raise ValueError(f"hours {text!r}: no hour given (write 'none' for no hour)")
        return cls(mask)

    def allows(self, hour: int) -> bool:
        return bool(self.mask >> hour & 1)

    def describe(self) -> str:
        if self.mask == ALL_DAY:
            return "0-24"
        spans, hour = [], 0
        while hour < 24:
            if self.allows(hour):
                end = hour
                while end < 24 and self.allows(end):
                    end += 1
                spans.append(f"{hour}-{end}")
                hour = end
            hour += 1
        return ",".join(spans) or "none"


ALL_HOURS = HourSet(ALL_DAY)


@dataclass(frozen=True, slots=True)
class Equipment:
    model: str
    count: int
    j_per_th: float          # declared efficiency: joules per terahash


@dataclass(frozen=True, slots=True)
class PowerProfile:
    hours: HourSet | None = None              # None: inherit (data centre, then default)
    quota_kwh: float | None = None            # monthly; None: no quota of its own
    equipment: tuple[Equipment, ...] = ()
    power_sources: tuple[str, ...] = ()       # what the fee rate depends on; () inherits
    avg_price_tenge: float | None = None      # average price paid per kWh; None: inherit or unknown
    metered: bool | None = None

    def j_per_th(self) -> float | None:
        """Count-weighted mean efficiency of the declared equipment (the hashrate split between
        models is not declared, so each unit weighs the same)."""
        units = sum(e.count for e in self.equipment)
        if units <= 0:
            return None
        return sum(e.count * e.j_per_th for e in self.equipment) / units


@dataclass(frozen=True, slots=True)
class FeeBasis:
    sources: tuple[str, ...]
    avg_price_tenge: float | None
    metered: bool


@dataclass(frozen=True, slots=True)
class ElectricityPlan:
    default_hours: HourSet = ALL_HOURS
    default_j_per_th: float = 30.0            # a mid-range SHA-256 ASIC; declare equipment instead
    datacentres: Mapping[str, PowerProfile] = field(default_factory=dict)
    miners: Mapping[str, PowerProfile] = field(default_factory=dict)

    def _chain(self, login: str, datacentre: str | None) -> list[PowerProfile]:
        return [p for p in (self.miners.get(login), self.datacentres.get(datacentre or "")) if p is not None]

    def standing_hours(self, login: str, datacentre: str | None) -> tuple[HourSet, str]:
        """The hours and whose they are: `login:<l>`, `datacentre:<id>` or `default`."""
        miner, dc = self.miners.get(login), self.datacentres.get(datacentre or "")
        if miner is not None and miner.hours is not None:
            return miner.hours, f"login:{login}"
        if dc is not None and dc.hours is not None:
            return dc.hours, f"datacentre:{datacentre}"
        return self.default_hours, "default"

    def j_per_th(self, login: str, datacentre: str | None) -> float:
        for profile in self._chain(login, datacentre):
            value = profile.j_per_th()
            if value is not None:
                return value
        return self.default_j_per_th

    def fee_basis(self, login: str, datacentre: str | None) -> FeeBasis:
        chain = self._chain(login, datacentre)
        sources = next((p.power_sources for p in chain if p.power_sources), ("grid",))
        price = next((p.avg_price_tenge for p in chain if p.avg_price_tenge is not None), None)
        metered = next((p.metered for p in chain if p.metered is not None), True)
        return FeeBasis(sources, price, metered)


# ---- from the config section ---------------------------------------------------------------------
def setting(obj: Any, name: str, default: Any) -> Any:
    """Config sections arrive as frozen dataclasses (PoolConfig) or as TOML dicts."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _profile(entry: Any, where: str) -> PowerProfile:
    hours_text = setting(entry, "hours", "")
    quota = float(setting(entry, "quota_kwh", 0.0))
    price = float(setting(entry, "avg_price_tenge", 0.0))
    sources = tuple(setting(entry, "power_sources", ()))
    for source in sources:
        if source not in POWER_SOURCES:
            raise ValueError(f"{where}.power_sources: {source!r} is not one of {list(POWER_SOURCES)}")
    equipment = []
    for i, item in enumerate(setting(entry, "equipment", ())):
        eq = Equipment(str(setting(item, "model", "")), int(setting(item, "count", 0)), float(setting(item, "j_per_th", 0.0)))
        if eq.count <= 0 or eq.j_per_th <= 0:
            raise ValueError(f"{where}.equipment[{i}]: count and j_per_th must be > 0")
        equipment.append(eq)
    try:
        hours = HourSet.parse(hours_text) if hours_text else None
    except ValueError as exc:
        raise ValueError(f"{where}.hours: {exc}") from None
    metered = setting(entry, "metered", None)
    return PowerProfile(hours=hours, quota_kwh=quota if quota > 0 else None, equipment=tuple(equipment),
                        power_sources=sources, avg_price_tenge=price if price > 0 else None,
                        metered=None if metered is None else bool(metered))


def plan_from_settings(settings: Any) -> ElectricityPlan:
    """The plan from `[electricity]`: default_hours, default_j_per_th, and arrays of tables
    `datacentres` (key `id`) and `miners` (key `login`). Raises ValueError naming the key."""
    if settings is None:
        return ElectricityPlan()
    try:
        default_hours = HourSet.parse(setting(settings, "default_hours", "0-24"))
    except ValueError as exc:
        raise ValueError(f"electricity.default_hours: {exc}") from None
    j_per_th = float(setting(settings, "default_j_per_th", 30.0))
    if j_per_th <= 0:
        raise ValueError("electricity.default_j_per_th must be > 0")
    tables: dict[str, dict[str, PowerProfile]] = {"datacentres": {}, "miners": {}}
    for section, key in (("datacentres", "id"), ("miners", "login")):
        for i, entry in enumerate(setting(settings, section, ())):
            name = str(setting(entry, key, ""))
            if not name or name in tables[section]:
                raise ValueError(f"electricity.{section}[{i}].{key}: missing or repeated")
            tables[section][name] = _profile(entry, f"electricity.{section}[{i}]")
    return ElectricityPlan(default_hours, j_per_th, tables["datacentres"], tables["miners"])
