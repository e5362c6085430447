"""The double-entry ledger: immutable postings whose entries sum to zero; balances are sums.

Sign convention: an entry moves `amount_sats` INTO its account (negative: out of it). A miner's
`available` balance is what the pool owes it; `chain:coinbase` goes negative by every reward the
chain paid the pool; `chain:payments` grows by every satoshi sent. Because every posting sums to
zero, so does the whole ledger: no satoshi is created or lost by bookkeeping.

Each entry also carries `commission_sats`, the pool commission charged on that amount: it travels
with the amount (immature -> available -> frozen -> paid) so a payout knows the commission behind
it for the distribution report. It is a memo column, not money: it does not sum to zero.

Every posting has a `ref`, its idempotency key (`block:<hash>:found`, `payout:<run>:sent`...):
posting a ref that exists does nothing, so a step retried after a crash never counts twice.
Writes go through `Ledger.write()`: one transaction holding the ledger's write lock (SQLite
BEGIN IMMEDIATE, a PostgreSQL advisory lock), so a balance read inside it stays true until commit.
Each posting is sent to the audit log once its transaction committed.

Money the chain took back after the miners could spend it (a block orphaned after maturity), or a
payment the ledger had given back (a cancelled PSBT broadcast anyway), is taken back from the
miners' available, then frozen balances, never below zero (`claw_back`); what they no longer hold
(already paid out, or reserved by a run) is booked to `pool:deficit`, whose negative balance is
the pool's loss, per login in the posting's memo, for the operator to cover or recover by hand.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from compliance import audit_events
from pool.db import Database

from .models import LedgerEntry, LedgerTxn

log = logging.getLogger("kzpool.payouts.ledger")

AuditSink = Callable[[str, dict[str, Any]], None]
LEDGER_LOCK_KEY = 0x6B7A_706F_6F6C_4C47        # "kzpoolLG": PostgreSQL advisory lock of ledger writes

CHAIN_COINBASE = "chain:coinbase"               # rewards the chain paid (negative balance)
CHAIN_PAYMENTS = "chain:payments"               # sent to miners on chain
CHAIN_NETWORK_FEES = "chain:network_fees"       # transaction fees the payout wallet paid
POOL_FEES = "pool:fees"                         # the pool's commission (pays network fees too)
POOL_FEES_IMMATURE = "pool:fees:immature"
POOL_PPS = "pool:pps"                           # PPS/FPPS: rewards in, share credits out; may go
POOL_PPS_IMMATURE = "pool:pps:immature"         # negative: the pool carries the variance
PAYOUT_IN_FLIGHT = "payout:in_flight"           # reserved by a committed run, not yet seen sent
POOL_DEFICIT = "pool:deficit"                   # paid to miners with nothing behind it (negative)
IMMATURE, AVAILABLE, FROZEN = "immature", "available", "frozen"


def miner_account(login: str, bucket: str) -> str:
    if bucket not in (IMMATURE, AVAILABLE, FROZEN) or ":" in login:
        raise ValueError(f"bad miner account {login!r}/{bucket!r}")
    return f"miner:{login}:{bucket}"


def parse_miner_account(account: str) -> tuple[str, str] | None:
    kind, _, rest = account.partition(":")
    login, _, bucket = rest.rpartition(":")
    return (login, bucket) if kind == "miner" and login else None


@dataclass(frozen=True, slots=True)
class Line:
    account: str
    amount: int
    commission: int = 0


@dataclass(frozen=True, slots=True)
class Posting:
    ref: str
    kind: str
    lines: tuple[Line, ...]
    memo: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(not isinstance(l.amount, int) or not isinstance(l.commission, int) for l in self.lines):
            raise TypeError(f"posting {self.ref}: amounts are integer satoshis")
        if sum(l.amount for l in self.lines) != 0:
            raise ValueError(f"posting {self.ref}: entries sum to {sum(l.amount for l in self.lines)}, not 0")
        if not self.ref or len(self.ref) > 160:
            raise ValueError("posting ref must be 1..160 characters")

    def reversed(self, ref: str, kind: str, memo: Mapping[str, Any]) -> "Posting":
        """The exact opposite: what undoes this posting (orphaned blocks, cancelled runs)."""
        return Posting(ref, kind, tuple(Line(l.account, -l.amount, -l.commission) for l in self.lines), memo)


@dataclass(frozen=True, slots=True)
class Balance:
    amount: int = 0
    commission: int = 0


def lines_from(pairs: Iterable[tuple[str, int, int]]) -> tuple[Line, ...]:
    """Lines with zero amount and zero commission dropped."""
    return tuple(Line(a, amt, com) for a, amt, com in pairs if amt or com)


def claw_back(balances: Mapping[str, Balance], claims: Iterable[tuple[str, int, int]]
              ) -> tuple[list[Line], dict[str, int]]:
    """Lines taking each claim (login, sats, commission) back from the miner's available balance,
    then its frozen one, neither below zero, and the rest (the shortfall) out of `pool:deficit`.
    Commission goes with the amount taken, pro rata (floored), never more than the bucket holds.
    Returns the lines (amounts sum to minus the claims) and the shortfall per login (> 0 only)."""
    owed: dict[str, list[int]] = {}
    for login, sats, commission in claims:
        entry = owed.setdefault(login, [0, 0])
        entry[0] += sats
        entry[1] += commission
    lines: list[Line] = []
    shortfall: dict[str, int] = {}
    for login, (sats, commission) in sorted(owed.items()):
        for bucket in (AVAILABLE, FROZEN):
            if sats <= 0:
                break
            held = balances.get(miner_account(login, bucket), Balance())
            take = min(sats, max(0, held.amount))
            if take <= 0:
                continue
            com = commission if take == sats else commission * take // sats
            com = min(com, max(0, held.commission))
            lines.append(Line(miner_account(login, bucket), -take, -com))
            sats, commission = sats - take, commission - com
        if sats > 0:
            shortfall[login] = sats
    if shortfall:
        lines.append(Line(POOL_DEFICIT, -sum(shortfall.values())))
    return lines, shortfall


class LedgerWriter:
    """One open write transaction; see `Ledger.write()`."""

    def __init__(self, conn: AsyncConnection, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.posted: list[Posting] = []
        self._clock = clock

    async def post(self, posting: Posting) -> bool:
        """Insert the posting; False (and nothing written) if its ref was posted before."""
        exists = (await self.conn.execute(select(LedgerTxn.id).where(LedgerTxn.ref == posting.ref))).first()
        if exists is not None:
            return False
        memo = json.dumps(dict(posting.memo), sort_keys=True, separators=(",", ":"))
        txn_id = (await self.conn.execute(insert(LedgerTxn).values(
            ref=posting.ref, kind=posting.kind, time_us=round(self._clock() * 1e6), memo=memo)
            .returning(LedgerTxn.id))).scalar_one()
        if posting.lines:
            await self.conn.execute(insert(LedgerEntry), [
                {"txn_id": txn_id, "account": l.account, "amount_sats": l.amount, "commission_sats": l.commission}
                for l in posting.lines])
        self.posted.append(posting)
        return True

    async def has(self, ref: str) -> bool:
        return (await self.conn.execute(select(LedgerTxn.id).where(LedgerTxn.ref == ref))).first() is not None

    async def lines(self, ref: str) -> tuple[Line, ...]:
        return await _lines(self.conn, ref)

    async def balances(self, prefix: str = "") -> dict[str, Balance]:
        return await _balances(self.conn, prefix)


class Ledger:
    def __init__(self, db: Database, audit: AuditSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    @asynccontextmanager
    async def write(self) -> AsyncIterator[LedgerWriter]:
        """A write transaction under the ledger lock; committed on a clean exit, rolled back on an
        exception. Postings reach the audit log only after the commit."""
        async with self.db.engine.connect() as conn:
            await self.db.begin_write(conn)
            if self.db.dialect == "postgresql":
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LEDGER_LOCK_KEY})")
            writer = LedgerWriter(conn, self.clock)
            try:
                yield writer
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
        for posting in writer.posted:
            log.info("event=ledger_posted ref=%s kind=%s lines=%d", posting.ref, posting.kind, len(posting.lines))
            if self.audit is not None:
                self.audit(audit_events.LEDGER, audit_events.ledger_posting(
                    posting.ref, posting.kind, [(l.account, l.amount, l.commission) for l in posting.lines],
                    dict(posting.memo)))

    async def post(self, posting: Posting) -> bool:
        async with self.write() as writer:
            return await writer.post(posting)

    async def balances(self, prefix: str = "") -> dict[str, Balance]:
        async with self.db.engine.connect() as conn:
            return await _balances(conn, prefix)

    async def lines(self, ref: str) -> tuple[Line, ...]:
        async with self.db.engine.connect() as conn:
            return await _lines(conn, ref)

    async def unbalanced(self) -> list[str]:
        """Refs whose entries do not sum to zero: always empty unless the tables were edited."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(LedgerTxn.ref).join(LedgerEntry, LedgerEntry.txn_id == LedgerTxn.id)
                .group_by(LedgerTxn.ref).having(func.sum(LedgerEntry.amount_sats) != 0))
            return [r.ref for r in rows]


async def _balances(conn: AsyncConnection, prefix: str) -> dict[str, Balance]:
    query = select(LedgerEntry.account, func.sum(LedgerEntry.amount_sats),
                   func.sum(LedgerEntry.commission_sats)).group_by(LedgerEntry.account)
    if prefix:
        query = query.where(LedgerEntry.account.startswith(prefix, autoescape=True))
    return {account: Balance(int(amount), int(commission)) for account, amount, commission in await conn.execute(query)}


async def _lines(conn: AsyncConnection, ref: str) -> tuple[Line, ...]:
    rows = await conn.execute(
        select(LedgerEntry.account, LedgerEntry.amount_sats, LedgerEntry.commission_sats)
        .join(LedgerTxn, LedgerEntry.txn_id == LedgerTxn.id).where(LedgerTxn.ref == ref)
        .order_by(LedgerEntry.id))
    return tuple(Line(a, int(amt), int(com)) for a, amt, com in rows)
