"""Energy per login per hour, computed from the accepted work in the database, off the hot path.

`EnergyAccountant.update()` (every `interval_s`) recomputes the last `recompute_hours` hours (the
whole current Kazakhstan month on its first run) from the shares table plus worker_stats_minute
(compaction moves old shares there), writes them to energy_hours (an upsert: running it twice, or
on two nodes, gives the same rows), then sums the month and says which quotas are used up
(`quota`), and reads the current hour's energy per login back (`hour_usage`, what the hourly
volume rule of compliance/hourly_volume.py judges: as fresh as this update, so at most `interval_s`
old for the writer, and `interval_s` more for a reader). Late shares (a spill file replayed after an
outage) are counted when they land inside the recompute window; `kzpool energy report` recomputes
its whole month anyway.

Both sources are read in one statement, so a compaction moving rows between them concurrently
can neither hide nor double a share.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.db import Database
from pool.share_export import to_micros

from .energy import QuotaState, kwh_for, kz_month_bounds, kz_month_of, quota_state
from .hourly_volume import HourUsage
from .models import Licence
from .power_models import EnergyHour
from .power_plan import ElectricityPlan
from .schedule import ScheduleBook, kz_hour, load_day_ahead
from .standing import Clock, utc_now
from .background_task import stop_background_task

log = logging.getLogger("kzpool.compliance.energy")

HOUR_S = 3600

_HOURLY = text("""
    SELECT a.login, x.hour_s, SUM(x.shares), SUM(x.difficulty_sum) FROM (
        SELECT worker_id, (time_us / 3600000000) * 3600 AS hour_s, COUNT(*) AS shares,
               SUM(difficulty) AS difficulty_sum
        FROM shares WHERE time_us >= :from_us AND time_us < :until_us
        GROUP BY worker_id, (time_us / 3600000000) * 3600
        UNION ALL
        SELECT worker_id, (minute_s / 3600) * 3600 AS hour_s, SUM(shares) AS shares,
               SUM(difficulty_sum) AS difficulty_sum
        FROM worker_stats_minute WHERE minute_s >= :from_s AND minute_s < :until_s
        GROUP BY worker_id, (minute_s / 3600) * 3600
    ) x JOIN workers w ON w.id = x.worker_id JOIN accounts a ON a.id = w.account_id
    GROUP BY a.login, x.hour_s""")

_MINUTES_WITH_SHARES = text("""
    SELECT COUNT(*) FROM (
        SELECT s.time_us / 60000000 AS m FROM shares s JOIN workers w ON w.id = s.worker_id
        JOIN accounts a ON a.id = w.account_id
        WHERE a.login = :login AND s.time_us >= :from_us AND s.time_us < :until_us
        UNION
        SELECT c.minute_s / 60 AS m FROM worker_stats_minute c JOIN workers w ON w.id = c.worker_id
        JOIN accounts a ON a.id = w.account_id
        WHERE a.login = :login AND c.minute_s >= :from_s AND c.minute_s < :until_s
    ) u""")


@dataclass(frozen=True, slots=True)
class HourEnergy:
    login: str
    hour_s: int                  # UTC (= Kazakhstan) hour start, unix seconds
    datacentre_id: str
    shares: int
    difficulty_sum: float
    j_per_th: float
    kwh: float
    outside_minutes: int         # minutes with accepted shares in an hour not allotted to the login


async def datacentres_of(conn: AsyncConnection) -> dict[str, str]:
    """login -> data centre id, from the licence registry (empty for an allowlist pool)."""
    return {login: dc for login, dc in await conn.execute(select(Licence.login, Licence.datacentre_id))}


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class EnergyAccountant:
    def __init__(self, db: Database, plan: ElectricityPlan, *, clock: Clock = utc_now, interval_s: float = 60.0,
                 recompute_hours: int = 3, writer: bool = True) -> None:
        if interval_s <= 0 or recompute_hours < 1:
            raise ValueError("energy.update_s must be > 0 and energy.recompute_hours >= 1")
        self.db = db
        self.plan = plan
        self.clock = clock
        self.interval_s = interval_s
        self.recompute_hours = recompute_hours
        # One process per pool computes and writes energy_hours (worker 0, or the singleton holder
        # on several machines); the others only read this month's totals for their quota state.
        self.writer = writer
        self.quota: QuotaState | None = None
        self.hour_usage: HourUsage | None = None        # this hour's kWh per login, as of the last update
        self._first = True
        self._task: asyncio.Task[None] | None = None

    # ---- reading --------------------------------------------------------------------------------------
    async def compute(self, start: datetime, end: datetime) -> list[HourEnergy]:
        """Energy per login per hour for the whole hours in [start, end); reads only."""
        start, end = _floor_hour(start), _floor_hour(end - timedelta(microseconds=1)) + timedelta(hours=1)
        async with self.db.engine.connect() as conn:
            dcs = await datacentres_of(conn)
            book = ScheduleBook(self.plan)
            book.set_day_ahead(await load_day_ahead(conn, kz_hour(start)[0], kz_hour(end)[0]))
            params = {"from_us": to_micros(start), "until_us": to_micros(end),
                      "from_s": int(start.timestamp()), "until_s": int(end.timestamp())}
            rows = (await conn.execute(_HOURLY, params)).all()
            out = []
            for login, hour_s, shares, difficulty_sum in rows:
                dc = dcs.get(login, "")
                j_per_th = self.plan.j_per_th(login, dc or None)
                moment = datetime.fromtimestamp(int(hour_s), UTC)
                allowed, _ = book.allowed_at(login, dc or None, moment)
                outside = 0 if allowed else await self._minutes_with_shares(conn, login, int(hour_s))
                out.append(HourEnergy(login, int(hour_s), dc, int(shares), float(difficulty_sum), j_per_th,
                                      kwh_for(float(difficulty_sum), j_per_th), outside))
        return sorted(out, key=lambda h: (h.login, h.hour_s))

    @staticmethod
    async def _minutes_with_shares(conn: AsyncConnection, login: str, hour_s: int) -> int:
        params = {"login": login, "from_us": hour_s * 1_000_000, "until_us": (hour_s + HOUR_S) * 1_000_000,
                  "from_s": hour_s, "until_s": hour_s + HOUR_S}
        return int((await conn.execute(_MINUTES_WITH_SHARES, params)).scalar() or 0)

    async def month_usage(self, year: int, month: int) -> dict[str, float]:
        start, end = kz_month_bounds(year, month)
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(select(EnergyHour.login, func.sum(EnergyHour.kwh)).where(
                EnergyHour.hour_s >= int(start.timestamp()), EnergyHour.hour_s < int(end.timestamp()))
                .group_by(EnergyHour.login))
            return {login: float(kwh) for login, kwh in rows}

    async def hour_energy(self, hour_s: int, now: datetime) -> HourUsage:
        """One hour's stored energy per login, as of when it was computed (`now` if nothing is stored)."""
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(EnergyHour.login, EnergyHour.kwh, EnergyHour.computed_us)
                                       .where(EnergyHour.hour_s == hour_s))).all()
        as_of = (datetime.fromtimestamp(max(r[2] for r in rows) / 1e6, UTC) if rows else now)
        return HourUsage(hour_s, {login: float(kwh) for login, kwh, _ in rows}, as_of)

    # ---- writing --------------------------------------------------------------------------------------
    async def store(self, hours: list[HourEnergy]) -> None:
        if not hours:
            return
        now_us = to_micros(self.clock())
        dialect_insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        stmt = dialect_insert(EnergyHour)
        stmt = stmt.on_conflict_do_update(index_elements=["login", "hour_s"], set_={
            name: stmt.excluded[name] for name in ("datacentre_id", "shares", "difficulty_sum", "j_per_th", "kwh",
                                                   "outside_minutes", "computed_us")})
        async with self.db.engine.begin() as conn:
            await conn.execute(stmt, [{"login": h.login, "hour_s": h.hour_s, "datacentre_id": h.datacentre_id,
                                       "shares": h.shares, "difficulty_sum": h.difficulty_sum, "j_per_th": h.j_per_th,
                                       "kwh": h.kwh, "outside_minutes": h.outside_minutes, "computed_us": now_us}
                                      for h in hours])

    async def update(self) -> QuotaState:
        """Recompute recent hours and store them (a writer), then judge this month's quotas."""
        now = self.clock()
        month = kz_month_of(now)
        month_start, _ = kz_month_bounds(*month)
        hours: list[HourEnergy] = []
        if self.writer:
            since = month_start if self._first else max(month_start, now - timedelta(hours=self.recompute_hours))
            hours = await self.compute(since, now)
            await self.store(hours)
            self._first = False
        usage = await self.month_usage(*month)
        async with self.db.engine.connect() as conn:
            dcs = await datacentres_of(conn)
        state = quota_state(self.plan, month, usage, dcs)
        self.hour_usage = await self.hour_energy(int(_floor_hour(now).timestamp()), now)
        for key in sorted(set(state.exhausted) - set(self.quota.exhausted if self.quota else {})):
            log.warning("event=energy_quota_used_up scope=%s", key)
        self.quota = state
        log.debug("event=energy_update hours=%d logins=%d", len(hours), len(usage))
        return state

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._run(), name="energy-accounting")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.update()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep the last quota state; the next run recomputes the same hours.
                log.warning("event=energy_update_failed error=%s", type(exc).__name__)

    async def stop(self) -> None:
        await stop_background_task(self._task)
        self._task = None
