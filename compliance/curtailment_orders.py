"""Curtailment orders: an operator's order to stop mining on grid power for a data centre or a
login during [starts_at, ends_at) (a grid emergency, a KEGOC instruction). Stored in
curtailment_orders by `kzpool curtail` from any process; every pool process reads the active ones
(compliance/curtailment.py polls every <= 2 s). Orders are never deleted or edited, only
cancelled (with a reason), so the history stays for the auditor.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.db import Database
from pool.share_export import to_micros

from .models import Datacentre
from .power_models import CurtailmentOrder
from .standing import KZ_TIME

SCOPES = ("datacentre", "login")
ORDERS = CurtailmentOrder.__table__
MAX_REASON = 512


class OrderError(ValueError):
    """An order the store refuses (bad times, unknown data centre, already over); safe to print."""


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def kz_text(moment: datetime) -> str:
    return moment.astimezone(KZ_TIME).strftime("%Y-%m-%d %H:%M UTC+5")


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    scope: str
    target: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    operator: str
    created_at: datetime
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None

    def in_force(self, moment: datetime) -> bool:
        return self.cancelled_at is None and self.starts_at <= moment < self.ends_at

    def status(self, moment: datetime) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if moment < self.starts_at:
            return "scheduled"
        return "in_force" if moment < self.ends_at else "ended"

    def describe(self) -> str:
        """For the miner and the audit log: no personal data, times in Kazakhstan time."""
        return (f"order {self.id} stops grid-powered mining for {self.scope} {self.target} "
                f"until {kz_text(self.ends_at)}: {self.reason}")


def _order(row: Row[Any]) -> Order:
    return Order(row.id, row.scope, row.target, from_micros(row.starts_us), from_micros(row.ends_us), row.reason,
                 row.operator, from_micros(row.created_us),
                 from_micros(row.cancelled_us) if row.cancelled_us is not None else None, row.cancel_reason)


async def create_order(db: Database, scope: str, target: str, starts_at: datetime, ends_at: datetime, reason: str,
                       operator: str, now: datetime) -> Order:
    if scope not in SCOPES:
        raise OrderError(f"scope {scope!r}: expected one of {list(SCOPES)}")
    if not target:
        raise OrderError(f"no {scope} given")
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise OrderError(f"--reason must be 1-{MAX_REASON} characters")
    if ends_at <= starts_at:
        raise OrderError(f"--until {kz_text(ends_at)} is not after --from {kz_text(starts_at)}")
    if ends_at <= now:
        raise OrderError(f"--until {kz_text(ends_at)} is already past")
    async with db.engine.begin() as conn:
        if scope == "datacentre" and (await conn.execute(
                select(Datacentre.id).where(Datacentre.id == target))).first() is None:
            raise OrderError(f"data centre {target!r} is not in the registry (kzpool datacentres list)")
        new_id = (await conn.execute(insert(CurtailmentOrder).values(
            scope=scope, target=target, starts_us=to_micros(starts_at), ends_us=to_micros(ends_at), reason=reason,
            operator=operator[:64], created_us=to_micros(now)).returning(CurtailmentOrder.id))).scalar_one()
        row = (await conn.execute(select(ORDERS).where(ORDERS.c.id == new_id))).one()
        return _order(row)


async def cancel_order(db: Database, order_id: int, reason: str, now: datetime) -> Order:
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise OrderError(f"--reason must be 1-{MAX_REASON} characters")
    async with db.engine.begin() as conn:
        await db.begin_write(conn)
        row = (await conn.execute(select(ORDERS).where(ORDERS.c.id == order_id))).one_or_none()
        if row is None:
            raise OrderError(f"no curtailment order {order_id}")
        status = _order(row).status(now)
        if status in ("cancelled", "ended"):
            raise OrderError(f"order {order_id} is {status} already")
        await conn.execute(update(CurtailmentOrder).where(CurtailmentOrder.id == order_id).values(
            cancelled_us=to_micros(now), cancel_reason=reason))
        row = (await conn.execute(select(ORDERS).where(ORDERS.c.id == order_id))).one()
        return _order(row)


async def list_orders(db: Database, now: datetime, *, include_past: bool = False) -> list[Order]:
    query = select(ORDERS).order_by(CurtailmentOrder.starts_us, CurtailmentOrder.id)
    if not include_past:
        query = query.where(CurtailmentOrder.cancelled_us.is_(None), CurtailmentOrder.ends_us > to_micros(now))
    async with db.engine.connect() as conn:
        return [_order(row) for row in await conn.execute(query)]


async def orders_in_force(conn: AsyncConnection, now: datetime) -> list[Order]:
    """The enforcer's poll: one indexed range read (ends_us), tiny in practice."""
    now_us = to_micros(now)
    rows = await conn.execute(select(ORDERS).where(
        CurtailmentOrder.ends_us > now_us, CurtailmentOrder.starts_us <= now_us,
        CurtailmentOrder.cancelled_us.is_(None)).order_by(CurtailmentOrder.id))
    return [_order(row) for row in rows]
