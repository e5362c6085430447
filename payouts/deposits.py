"""Miners' deposit addresses at licensed exchanges (the share of each payout sent there is decided
in payouts/payout_plan.py). Set and removed by the operator; every change is audit-logged."""
from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import delete, insert, select

from compliance import audit_events
from pool.address import AddressError, address_to_script
from pool.db import Database

from .ledger import AuditSink
from .models import ExchangeDeposit
from .payout_plan import Deposit
from .schemes import BPS


class DepositError(ValueError):
    """A deposit registration refused; safe to print."""


async def set_deposit(db: Database, login: str, exchange_id: str, address: str, share_bps: int, *, network: str,
                      eligible: tuple[str, ...], audit: AuditSink | None = None,
                      clock: Callable[[], float] = time.time) -> None:
    if exchange_id not in eligible:
        raise DepositError(f"exchange {exchange_id!r} is not in payouts.eligible_exchanges {list(eligible)}")
    if not 0 <= share_bps <= BPS:
        raise DepositError("share must be 0..10000 basis points")
    try:
        address_to_script(address, network)
    except AddressError as exc:
        raise DepositError(f"deposit address: {exc}") from None
    values = {"exchange_id": exchange_id, "address": address, "share_bps": share_bps,
              "updated_us": round(clock() * 1e6)}
    async with db.engine.begin() as conn:
        await conn.execute(delete(ExchangeDeposit).where(ExchangeDeposit.login == login))
        await conn.execute(insert(ExchangeDeposit).values(login=login, **values))
    if audit is not None:
        audit(audit_events.PAYOUT, audit_events.payout("deposit_set", "-", login=login, exchange_id=exchange_id,
                                                       address=address, share_bps=share_bps))


async def remove_deposit(db: Database, login: str, *, audit: AuditSink | None = None) -> bool:
    async with db.engine.begin() as conn:
        removed = (await conn.execute(delete(ExchangeDeposit).where(ExchangeDeposit.login == login))).rowcount
    if removed and audit is not None:
        audit(audit_events.PAYOUT, audit_events.payout("deposit_removed", "-", login=login))
    return bool(removed)


async def list_deposits(db: Database) -> dict[str, Deposit]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(ExchangeDeposit).order_by(ExchangeDeposit.login))
        return {r.login: Deposit(r.exchange_id, r.address, r.share_bps) for r in rows}
