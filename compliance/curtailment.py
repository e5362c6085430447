"""Decides, per login, whether mining on grid power is allowed now, and acts when that changes.

Work stops for a login when (first match names the reason):
- `curtailed`: a curtailment order for the login or its data centre is in force
  (compliance/curtailment_orders.py, written by `kzpool curtail` from any process);
- `quota_used_up`: the login's or its data centre's monthly energy quota is used up
  (compliance/energy_accounting.py, when wired);
- `outside_schedule`: the current hour (Kazakhstan time) is not allotted to it
  (compliance/schedule.py);
- `hourly_volume_used_up`: the hour is allotted, but the energy estimated from the accepted work of
  the allotment's logins in this hour reached its volume, allowed_kw x 1 h (compliance/hourly_volume.py,
  from the accountant's `hour_usage`, when wired); released at the next hour whose allotment is
  not used up.

`CurtailmentEnforcer` polls the database every `poll_s` (<= 2 s, so an order reaches the miners
within 5 s), and also wakes exactly at each hour boundary, when schedules change. When the state
changes it judges the connected logins (`connected_logins()`) and the ones it blocked before:
- newly blocked: `on_block(login, text, False)` (tell the miner; the pool stops giving it jobs),
  then after `grace_s`, if still blocked, `on_block(login, text, True)` (disconnect);
  with grace_s = 0 only the second call;
- released: `on_release(login)`; the miner is welcome back (its next authorization succeeds).
`work_allowed(login)` / `blocked_reason(login)` are in-memory reads for the authorizer, the job
broadcast and the share path. Each scope that starts or stops being blocked (an order, a quota, a
schedule's hour, an allotment's volume in one hour) is recorded in the audit log (kind curtailment),
once per node.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from pool.db import Database

from . import audit_events
from .curtailment_orders import Order, kz_text, orders_in_force
from .energy import QuotaState
from .energy_accounting import datacentres_of
from .hourly_volume import MAX_RESERVE_S, HourUsage, VolumeState, hour_start_s, judge_volumes
from .models import Licence
from .schedule import ScheduleBook, kz_hour
from .standing import Clock, kz_today, utc_now
from .background_task import stop_background_task

log = logging.getLogger("kzpool.compliance.curtailment")

CURTAILED = "curtailed"
QUOTA_USED_UP = "quota_used_up"
OUTSIDE_SCHEDULE = "outside_schedule"
HOURLY_VOLUME_USED_UP = "hourly_volume_used_up"
MAX_POLL_S = 2.0
BlockCallback = Callable[[str, str, bool], None]     # (login, text, disconnect)
AuditSink = Callable[[str, dict[str, Any]], None]


class CurtailmentEnforcer:
    def __init__(self, db: Database, schedule: ScheduleBook, *, on_block: BlockCallback,
                 on_release: Callable[[str], None] | None = None,
                 connected_logins: Callable[[], Iterable[str]] = lambda: (),
                 quota: Callable[[], QuotaState | None] | None = None, grace_s: float = 30.0,
                 poll_s: float = 1.0, clock: Clock = utc_now, audit: AuditSink | None = None,
                 node_id: str = "", hour_usage: Callable[[], HourUsage | None] | None = None,
                 volume_reserve_s: float = 0.0) -> None:
        if not 0 < poll_s <= MAX_POLL_S:
            raise ValueError(f"curtailment.poll_s must be in (0, {MAX_POLL_S}]: orders reach miners within 5 s")
        if grace_s < 0:
            raise ValueError("curtailment.grace_s must be >= 0")
        self.db = db
        self.schedule = schedule
        self.on_block = on_block
        self.on_release = on_release
        self.connected_logins = connected_logins
        self.quota = quota
        self.hour_usage = hour_usage
        self.volume_reserve_s = volume_reserve_s
        if not 0 <= volume_reserve_s <= MAX_RESERVE_S:
            raise ValueError(f"curtailment.volume_reserve_s must be in [0, {MAX_RESERVE_S:g}]")
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.clock = clock
        self.audit = audit
        self.node_id = node_id
        self._now = clock()
        self._orders: list[Order] = []
        self._by_login: dict[str, Order] = {}
        self._by_dc: dict[str, Order] = {}
        self._quota: QuotaState | None = None
        self._volume: VolumeState | None = None
        self._volume_inputs: tuple[Any, ...] | None = None
        self._volume_usage: HourUsage | None = None
        self._dcs: dict[str, str] = {}
        self._licence_seq: int | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._memo: dict[str, str | None] = {}
        self._blocked: dict[str, str] = {}                      # login -> text, logins acted on
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._scopes: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.polls = 0
        self.failed_polls = 0

    # ---- what the pool asks (in memory, cheap) --------------------------------------------------------
    def blocked_reason(self, login: str) -> str | None:
        """`<reason>: <text>` when this login may not mine now, else None."""
        if login in self._blocked:
            return self._blocked[login]
        if login not in self._memo:
            self._memo[login] = self._judge(login)
        return self._memo[login]

    @property
    def blocked_count(self) -> int:
        """Logins the enforcer is withholding from work now (for the metrics)."""
        return len(self._blocked)

    @property
    def volume(self) -> VolumeState | None:
        """This hour's day-ahead allotments and the energy used against them (for the metrics)."""
        return self._volume

    def work_allowed(self, login: str) -> bool:
        return self.blocked_reason(login) is None

    def _judge(self, login: str) -> str | None:
        dc = self._dcs.get(login)
        order = self._by_login.get(login) or (self._by_dc.get(dc) if dc else None)
        if order is not None:
            return f"{CURTAILED}: {order.describe()}"
        quota = self._quota.reason_for(login, dc) if self._quota else None
        if quota:
            return f"{QUOTA_USED_UP}: {quota}"
        allowed, source = self.schedule.allowed_at(login, dc, self._now)
        if allowed:
            volume = self._volume.used_up(self.schedule.allotment(login, dc, self._now)) if self._volume else None
            if volume is None:
                return None
        back = self.schedule.next_allowed(login, dc, self._now)
        until = f" until {kz_text(back)}" if back else ""
        if not allowed:
            return f"{OUTSIDE_SCHEDULE}: grid power is not allotted to {source} in this hour{until}"
        return f"{HOURLY_VOLUME_USED_UP}: {self._volume.describe(volume)}{until}"

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """One poll now (the baseline, before miners connect), then poll in the background."""
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="curtailment")

    async def stop(self) -> None:
        await stop_background_task(self._task)
        self._task = None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _run(self) -> None:
        while True:
            now = self.clock()
            to_hour = 3600 - (now.timestamp() % 3600)
            await asyncio.sleep(min(self.poll_s, to_hour + 0.001))
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is away: keep the last state (orders already in force stay in force).
                self.failed_polls += 1
                log.warning("event=curtailment_poll_failed error=%s failures=%d", type(exc).__name__,
                            self.failed_polls)

    async def poll_once(self) -> None:
        now = self.clock()
        async with self.db.engine.connect() as conn:
            orders = await orders_in_force(conn, now)
            await self.schedule.refresh(conn, kz_today(now))
            seq = (await conn.execute(select(func.max(Licence.change_seq)))).scalar()
            if seq != self._licence_seq:
                self._dcs = await datacentres_of(conn)
                self._licence_seq = seq
        self.apply(now, orders)
        self.polls += 1

    # ---- judging a new state ------------------------------------------------------------------------
    def _judge_volumes(self, now: datetime) -> VolumeState | None:
        """This hour's allotments against the accountant's latest estimate; recomputed only when
        the estimate, the hour, the schedule or the registry changed."""
        if self.hour_usage is None:
            return None
        usage = self.hour_usage()
        inputs = (hour_start_s(now), self.schedule.version, self._licence_seq)
        if inputs != self._volume_inputs or usage is not self._volume_usage or self._volume is None:
            self._volume_inputs, self._volume_usage = inputs, usage
            self._volume = judge_volumes(self.schedule, now, usage, self._dcs, self.volume_reserve_s)
        return self._volume

    def apply(self, now: datetime, orders: list[Order]) -> None:
        quota = self.quota() if self.quota is not None else None
        volume = self._judge_volumes(now)
        fingerprint = (tuple(o.id for o in orders), kz_hour(now), self.schedule.version, self._licence_seq,
                       tuple(sorted(quota.exhausted)) if quota else (), quota.month if quota else None,
                       volume.exhausted if volume else ())
        if fingerprint == self._fingerprint:
            return
        first = self._fingerprint is None
        self._fingerprint = fingerprint
        self._now, self._orders, self._quota = now, orders, quota
        self._by_login = {o.target: o for o in orders if o.scope == "login"}
        self._by_dc = {o.target: o for o in orders if o.scope == "datacentre"}
        self._memo.clear()
        self._record_scopes(first)
        for login in set(self.connected_logins()) | set(self._blocked):
            text, before = self._judge(login), self._blocked.get(login)
            if text and not before:
                self._block(login, text)
            elif before and not text:
                self._release(login)
            elif text and text != before:
                self._blocked[login] = text

    def _block(self, login: str, text: str) -> None:
        self._blocked[login] = text
        log.info("event=curtailment_block login=%s reason=%s grace_s=%g", login, text.partition(":")[0], self.grace_s)
        if self.grace_s <= 0:
            self._call(login, text, True)
            return
        self._call(login, text, False)
        self._timers[login] = asyncio.get_running_loop().call_later(self.grace_s, self._grace_over, login)

    def _grace_over(self, login: str) -> None:
        self._timers.pop(login, None)
        text = self._blocked.get(login)
        if text is not None:
            self._call(login, text, True)

    def _release(self, login: str) -> None:
        timer = self._timers.pop(login, None)
        if timer is not None:
            timer.cancel()
        del self._blocked[login]
        log.info("event=curtailment_release login=%s", login)
        if self.on_release is not None:
            try:
                self.on_release(login)
            except Exception:
                log.exception("event=curtailment_callback_failed login=%s", login)

    def _call(self, login: str, text: str, disconnect: bool) -> None:
        try:
            self.on_block(login, text, disconnect)
        except Exception:
            log.exception("event=curtailment_callback_failed login=%s", login)

    # ---- audit: one record per scope that starts or stops being blocked ----------------------------------
    def _current_scopes(self) -> dict[str, tuple[str, str, str, str, dict[str, Any]]]:
        scopes: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {}
        for o in self._orders:
            scopes[f"order:{o.id}"] = ("order", o.scope, o.target, o.reason, {
                "order": o.id, "from": kz_text(o.starts_at), "until": kz_text(o.ends_at), "operator": o.operator})
        for key, text in (self._quota.exhausted.items() if self._quota else ()):
            scope, _, target = key.partition(":")
            scopes[f"quota:{key}"] = ("quota", scope, target, text, {})
        day, hour = kz_hour(self._now)
        names = {("default", "")} | {("datacentre", d) for d in self.schedule.plan.datacentres} | {
            ("login", m) for m in self.schedule.plan.miners} | set(self.schedule.day_ahead(day))
        for scope, target in names:
            hours, source = self.schedule.scope_hours(scope, target, day)
            if hours is not None and not hours.allows(hour):
                scopes[f"schedule:{scope}:{target}"] = ("schedule", scope, target or "-",
                                                        f"hour {hour} (UTC+5) not allotted", {"hours": source})
        volume = self._volume
        if volume is not None and volume.hour_s == hour_start_s(self._now):
            # Keyed by the hour as well: one block record per scope and hour, released when the hour ends.
            for key in volume.exhausted:
                v = volume.scopes[key]
                scopes[f"volume:{day.isoformat()}T{hour:02d}:{key}"] = (
                    "volume", v.scope, v.target, volume.describe(v), volume.audit_details(v))
        return scopes

    def _record_scopes(self, first: bool) -> None:
        now_scopes = self._current_scopes()
        for key in sorted(now_scopes.keys() - self._scopes.keys()):
            self._audit("block", now_scopes[key], at_start=first)
        for key in sorted(self._scopes.keys() - now_scopes.keys()):
            self._audit("release", self._scopes[key])
        self._scopes = now_scopes

    def _audit(self, action: str, scope: tuple[str, str, str, str, dict[str, Any]], **extra: Any) -> None:
        cause, kind, target, reason, details = scope
        log.info("event=curtailment_%s cause=%s scope=%s:%s", action, cause, kind, target)
        if self.audit is not None:
            details = {**details, **{k: v for k, v in extra.items() if v}}
            self.audit(audit_events.CURTAILMENT, audit_events.curtailment(
                action, cause, kind, target, node_id=self.node_id, reason=reason, **details))

