"""When grid power is allotted: standing hours from the config and day-ahead schedules.

Miners buy grid power only within the volumes the system operator (KEGOC) allots on the day-ahead
market (09:30-10:00 Astana time, the day before). An operator imports each day's allotment as CSV
(`kzpool energy import-schedule FILE`), one row per hour:

    date,datacentre,login,hour,allowed_kw
    2026-12-01,dc-almaty-1,,0,1500

`date` and `hour` (0..23) are Kazakhstan time (UTC+5); exactly one of datacentre / login is set.
allowed_kw is both the rule for the hour and its volume: 0 means not allotted; above 0 the hour is
allotted and its grid energy may reach allowed_kw x 1 h (kWh), enforced by
compliance/hourly_volume.py. An import replaces every (date, data centre or login) it names, and
hours it does not list for one of them are not allotted. It is all or nothing: a file with one bad
row changes nothing. Each applied import is one audit record (kind `day_ahead_schedule`, see
`import_record`): its import number, rows, dates, scopes, allotted hours and kWh per date and scope,
and the SHA-256 of the file, so the log says which allotments were in force and from which file.

For a login at an instant the first that exists decides: the login's day-ahead hours for that
date, its data centre's day-ahead hours, then the standing hours (login, data centre, default;
compliance/power_plan.py). The same precedence names the allotment whose volume the login draws
on (`ScheduleBook.allotment`): the login's own day-ahead row, else its data centre's (shared by
every login of the data centre without rows of its own that date); standing hours carry no volume.
Kazakhstan's hours start on UTC hour boundaries (UTC+5, no DST), so "the hour" of an instant is
the same hour either way; only the date and the hour number differ.
"""
from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Callable

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.db import Database

from .csv_import import NAME_PATTERN, RowProblem
from .power_models import DayAheadHour
from .power_plan import ElectricityPlan, HourSet
from .standing import KZ_TIME

DAY_AHEAD_COLUMNS = ("date", "datacentre", "login", "hour", "allowed_kw")
SCHEDULE_IMPORT = "day_ahead_schedule"      # the audit record kind of an applied import
AuditSink = Callable[[str, dict[str, Any]], None]
ScopeKey = tuple[str, str]           # ("datacentre", id) | ("login", login)


@dataclass(frozen=True, slots=True)
class DayAheadRow:
    day: date
    scope: str
    target: str
    hour: int
    allowed_kw: float


@dataclass(frozen=True, slots=True)
class Allotment:
    """The day-ahead allotment a login draws on in one Kazakhstan hour: whose it is and its power.
    Its volume is allowed_kw x 1 h (kWh); a data centre's is shared by the logins it governs."""
    scope: str                       # "login" | "datacentre"
    target: str
    day: date                        # Kazakhstan date
    hour: int                        # 0..23, Kazakhstan time
    allowed_kw: float

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.target}"

    @property
    def kwh(self) -> float:
        return self.allowed_kw * 1.0     # one hour at the allotted power


@dataclass(frozen=True, slots=True)
class DayAheadReport:
    rows: int
    groups: int                      # (date, scope) pairs replaced
    problems: list[RowProblem]
    applied: bool
    import_seq: int = 0              # day_ahead_hours.import_seq of an applied import
    record: dict[str, Any] = field(default_factory=dict)    # its audit payload


def import_record(import_seq: int, rows: int, groups: dict[tuple[date, str, str], dict[int, float]],
                  sha256: str, size: int, *, source: str | None, operator: str | None) -> dict[str, Any]:
    """The audit payload of an applied import: no personal data (logins are the pool's pseudonyms,
    as in every record); kWh as decimal strings (C-JSON has no fractions)."""
    allotments = [{"date": day.isoformat(), "scope": f"{scope}:{target}",
                   "allotted_hours": sum(1 for kw in hours.values() if kw > 0),
                   "kwh": f"{sum(hours.values()):.3f}"}
                  for (day, scope, target), hours in sorted(groups.items())]
    return {"action": "imported", "subject": f"import:{import_seq}", "import_seq": import_seq, "rows": rows,
            "dates": sorted({a["date"] for a in allotments}), "scopes": sorted({a["scope"] for a in allotments}),
            "allotments": allotments, "sha256": sha256, "bytes": size, "file": source, "operator": operator}


def kz_hour(moment: datetime) -> tuple[date, int]:
    """The Kazakhstan date and hour (0..23) of an aware instant."""
    local = moment.astimezone(KZ_TIME)
    return local.date(), local.hour


def parse_day_ahead(text: str) -> tuple[list[DayAheadRow], list[RowProblem]]:
    problems: list[RowProblem] = []
    rows: list[DayAheadRow] = []
    seen: set[tuple[date, str, str, int]] = set()
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = tuple(h.strip() for h in next(reader, []))
    if header != DAY_AHEAD_COLUMNS:
        return [], [RowProblem(1, "header", f"expected {','.join(DAY_AHEAD_COLUMNS)}")]
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        n = reader.line_num
        if len(cells) != len(DAY_AHEAD_COLUMNS):
            problems.append(RowProblem(n, "row", f"has {len(cells)} fields, expected {len(DAY_AHEAD_COLUMNS)}"))
            continue
        rec = dict(zip(DAY_AHEAD_COLUMNS, (c.strip() for c in cells)))
        before = len(problems)
        try:
            day = date.fromisoformat(rec["date"])
        except ValueError:
            problems.append(RowProblem(n, "date", "expected YYYY-MM-DD"))
        if bool(rec["datacentre"]) == bool(rec["login"]):
            problems.append(RowProblem(n, "datacentre", "set exactly one of datacentre and login"))
        scope = "datacentre" if rec["datacentre"] else "login"
        target = rec["datacentre"] or rec["login"]
        if target and not NAME_PATTERN.fullmatch(target):
            problems.append(RowProblem(n, scope, "must be 1-64 letters, digits, '_' or '-'"))
        hour = int(rec["hour"]) if rec["hour"].isdigit() else -1
        if not 0 <= hour <= 23:
            problems.append(RowProblem(n, "hour", "must be 0..23 (Kazakhstan time)"))
        try:
            allowed_kw = float(rec["allowed_kw"])
            if not allowed_kw >= 0 or allowed_kw == float("inf"):
                raise ValueError
        except ValueError:
            problems.append(RowProblem(n, "allowed_kw", "must be a number >= 0"))
        if len(problems) > before:
            continue
        key = (day, scope, target, hour)
        if key in seen:
            problems.append(RowProblem(n, "hour", f"{target} hour {hour} of {day} listed twice"))
            continue
        seen.add(key)
        rows.append(DayAheadRow(day, scope, target, hour, allowed_kw))
    if not rows and not problems:
        problems.append(RowProblem(2, "row", "no rows"))
    return rows, problems


async def import_day_ahead(db: Database, text: str, *, dry_run: bool = False, audit: AuditSink | None = None,
                           sha256: str | None = None, size: int | None = None, source: str | None = None,
                           operator: str | None = None) -> DayAheadReport:
    """Check, then (unless a dry run or a file with problems) replace the schedules the file names.
    An applied import goes to `audit` once, after its commit; `sha256` and `size` are of the
    file's bytes (default: of `text` in UTF-8), `source` its name, `operator` who imported it."""
    rows, problems = parse_day_ahead(text)
    groups: dict[tuple[date, str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        groups[(r.day, r.scope, r.target)][r.hour] = r.allowed_kw
    if problems or dry_run:
        return DayAheadReport(len(rows), len(groups), problems, applied=False)
    async with db.engine.begin() as conn:
        await db.begin_write(conn)
        seq = ((await conn.execute(select(func.max(DayAheadHour.import_seq)))).scalar() or 0) + 1
        for (day, scope, target), hours in groups.items():
            await conn.execute(delete(DayAheadHour).where(DayAheadHour.day == day, DayAheadHour.scope == scope,
                                                          DayAheadHour.target == target))
            # All 24 hours are stored, unlisted ones at 0 kW, so a lookup never has to guess.
            await conn.execute(insert(DayAheadHour), [
                {"day": day, "scope": scope, "target": target, "hour": h, "allowed_kw": hours.get(h, 0.0),
                 "import_seq": seq} for h in range(24)])
    if sha256 is None:
        data = text.encode("utf-8")
        sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    record = import_record(seq, len(rows), groups, sha256, size if size is not None else len(text.encode()),
                           source=source, operator=operator)
    if audit is not None:
        audit(SCHEDULE_IMPORT, record)
    return DayAheadReport(len(rows), len(groups), [], applied=True, import_seq=seq, record=record)


async def day_ahead_seq(conn: AsyncConnection) -> int:
    return (await conn.execute(select(func.max(DayAheadHour.import_seq)))).scalar() or 0


DayAheadKw = dict[date, dict[ScopeKey, tuple[float, ...]]]     # 24 allowed_kw values per date and scope


async def load_day_ahead_kw(conn: AsyncConnection, first: date, last: date) -> DayAheadKw:
    """allowed_kw of each hour (0..23) per date and scope, for first..last inclusive."""
    kw: dict[date, dict[ScopeKey, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0] * 24))
    rows = await conn.execute(select(DayAheadHour.day, DayAheadHour.scope, DayAheadHour.target, DayAheadHour.hour,
                                     DayAheadHour.allowed_kw).where(DayAheadHour.day >= first, DayAheadHour.day <= last))
    for day, scope, target, hour, allowed_kw in rows:
        kw[day][(scope, target)][hour] = float(allowed_kw)
    return {day: {key: tuple(values) for key, values in by_scope.items()} for day, by_scope in kw.items()}


def hour_sets(kw: DayAheadKw) -> dict[date, dict[ScopeKey, HourSet]]:
    """The allotted hours (allowed_kw > 0) of day-ahead kW values."""
    return {day: {key: HourSet(sum(1 << h for h, v in enumerate(values) if v > 0)) for key, values in by_scope.items()}
            for day, by_scope in kw.items()}


async def load_day_ahead(conn: AsyncConnection, first: date, last: date) -> dict[date, dict[ScopeKey, HourSet]]:
    """Allotted hours (allowed_kw > 0) per date and scope, for first..last inclusive."""
    return hour_sets(await load_day_ahead_kw(conn, first, last))


class ScheduleBook:
    """Answers "is grid power allotted to this login now?" from memory; `refresh` reloads the
    day-ahead hours around today when an import happened (one indexed MAX per call otherwise)."""

    def __init__(self, plan: ElectricityPlan) -> None:
        self.plan = plan
        self._days: dict[date, dict[ScopeKey, HourSet]] = {}
        self._kw: DayAheadKw = {}
        self._seq = -1
        self._loaded: tuple[date, date] | None = None
        self.version = 0                 # bumped whenever the day-ahead hours in memory change

    def set_day_ahead(self, days: dict[date, dict[ScopeKey, HourSet]], kw: DayAheadKw | None = None) -> None:
        """The day-ahead hours; with their kW values the allotments' volumes are known too."""
        self._days = days
        self._kw = kw or {}
        self.version += 1

    def set_day_ahead_kw(self, kw: DayAheadKw) -> None:
        self.set_day_ahead(hour_sets(kw), kw)

    def day_ahead(self, day: date) -> dict[ScopeKey, HourSet]:
        return self._days.get(day, {})

    async def refresh(self, conn: AsyncConnection, today: date) -> bool:
        """Reload yesterday..tomorrow when the import sequence moved or the date did; True if reloaded."""
        seq = await day_ahead_seq(conn)
        span = (today - timedelta(days=1), today + timedelta(days=1))
        if seq == self._seq and span == self._loaded:
            return False
        self.set_day_ahead_kw(await load_day_ahead_kw(conn, *span))
        self._seq, self._loaded = seq, span
        return True

    def _day_ahead_key(self, login: str, datacentre: str | None, day: date) -> ScopeKey | None:
        """Whose day-ahead rows decide for a login on a KZ date (the login's, then its data
        centre's), or None when standing hours do."""
        today = self._days.get(day, {})
        for key in (("login", login), ("datacentre", datacentre or "")):
            if key in today:
                return key
        return None

    def hours(self, login: str, datacentre: str | None, day: date) -> tuple[HourSet, str]:
        """The hours in force on a KZ date and whose they are (`day-ahead login:x`, `datacentre:y`...)."""
        key = self._day_ahead_key(login, datacentre, day)
        if key is not None:
            return self._days[day][key], f"day-ahead {key[0]}:{key[1]}"
        return self.plan.standing_hours(login, datacentre)

    def allotment(self, login: str, datacentre: str | None, moment: datetime) -> Allotment | None:
        """The day-ahead allotment this login draws on in the hour of `moment` (allowed_kw may be 0:
        not allotted), by the same precedence as `hours`; None when standing hours decide (they
        carry no volume) or the kW values are not known."""
        day, hour = kz_hour(moment)
        key = self._day_ahead_key(login, datacentre, day)
        kw = self._kw.get(day, {}).get(key) if key is not None else None
        if key is None or kw is None:
            return None
        return Allotment(key[0], key[1], day, hour, kw[hour])

    def allotments_at(self, moment: datetime) -> list[Allotment]:
        """Every day-ahead allotment (data centre or login) of the hour of `moment`."""
        day, hour = kz_hour(moment)
        return [Allotment(scope, target, day, hour, kw[hour])
                for (scope, target), kw in sorted(self._kw.get(day, {}).items())]

    def scope_hours(self, scope: str, target: str, day: date) -> tuple[HourSet | None, str]:
        """One scope's own hours on a KZ date (None: it has none and inherits), and their source;
        scope is "default", "datacentre" or "login"."""
        day_ahead = self.day_ahead(day).get((scope, target))
        if day_ahead is not None:
            return day_ahead, f"day-ahead {day_ahead.describe()}"
        plan = self.plan
        if scope == "default":
            return plan.default_hours, plan.default_hours.describe()
        profile = plan.datacentres.get(target) if scope == "datacentre" else plan.miners.get(target)
        hours = profile.hours if profile is not None else None
        return hours, hours.describe() if hours is not None else ""

    def allowed_at(self, login: str, datacentre: str | None, moment: datetime) -> tuple[bool, str]:
        day, hour = kz_hour(moment)
        hours, source = self.hours(login, datacentre, day)
        return hours.allows(hour), source

    def next_allowed(self, login: str, datacentre: str | None, moment: datetime) -> datetime | None:
        """The start of the next allotted hour within two days, or None if none is known."""
        start = moment.astimezone(KZ_TIME).replace(minute=0, second=0, microsecond=0)
        for step in range(1, 49):
            candidate = start + timedelta(hours=step)
            if self.allowed_at(login, datacentre, candidate)[0]:
                return candidate
        return None
