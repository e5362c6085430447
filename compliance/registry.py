"""The licence registry: async queries for the authorizer and the watcher, status changes, and the
all-or-nothing CSV imports.

Every write runs in one transaction that holds the registry's write lock from its first statement
(BEGIN IMMEDIATE on SQLite, LOCK TABLE on PostgreSQL), so two imports cannot both pass the
duplicate and overlap checks against a state the other is changing. Personal data goes in and out
only through the PiiBox; logs name logins, licence numbers and counts, never IIN/BINs or names.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Callable

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.db import Database

from .csv_import import (IpNetwork, RegistrySnapshot, RowProblem, check_datacentres, check_licences)
from .iin import mask_iin_bin, parse_iin_bin
from .models import Datacentre, DatacentreNetwork, Licence, LicenceEvent
from .pii import PiiBox
from .standing import Clock, LicenceDates, LicenceStatus, effective_status, kz_today, utc_now

log = logging.getLogger("kzpool.compliance.registry")

AuditSink = Callable[[str, dict[str, Any]], None]
MAX_SUSPENSION_MONTHS = 6      # the law suspends a licence for 1 to 6 months
REGISTRY_TABLES = ("licence_events", "licences", "datacentre_networks", "datacentres")


class RegistryError(ValueError):
    """A change the registry refuses (unknown login, wrong state, bad date); safe to print."""


@dataclass(frozen=True, slots=True)
class LicenceRecord:
    """What authorization needs to know about a login: no personal data."""
    dates: LicenceDates
    licence_no: str
    subtype: str
    datacentre_id: str
    networks: tuple[IpNetwork, ...]


@dataclass(frozen=True, slots=True)
class ImportReport:
    kind: str                    # "licences" | "datacentres"
    rows: int                    # rows read (good or bad)
    problems: list[RowProblem]
    applied: bool                # False for a dry run or a file with problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per bad row: `row N: column: reason; column: reason`."""
        by_row: dict[int, list[str]] = {}
        for p in self.problems:
            by_row.setdefault(p.row, []).append(f"{p.column}: {p.reason}")
        return [f"row {row}: " + "; ".join(cells) for row, cells in sorted(by_row.items())]


@dataclass(frozen=True, slots=True)
class LicenceView:
    """A licence for the operator's screen; iin_bin and name are masked unless revealed."""
    dates: LicenceDates
    licence_no: str
    subtype: str
    effective_status: str
    status_changed_at: datetime
    datacentre_id: str
    payout_address: str
    iin_bin: str
    name: str
    events: list[tuple[datetime, str, str, str]] = field(default_factory=list)   # (at, action, status, reason)


def _aware(moment: datetime) -> datetime:
    # SQLite hands DateTime(timezone=True) back naive; everything stored is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def add_months(day: date, months: int) -> date:
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    for dom in (day.day, 30, 29, 28):
        try:
            return date(year, month, dom)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def mask_name(name: str) -> str:
    return (name[:1] + "***") if name else ""


class LicenceRegistry:
    def __init__(self, db: Database, pii: PiiBox, *, clock: Clock = utc_now,
                 audit: AuditSink | None = None) -> None:
        self.db = db
        self.pii = pii
        self.clock = clock
        self.audit = audit

    # ---- reads ------------------------------------------------------------------------------
    async def lookup(self, login: str) -> LicenceRecord | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(Licence).where(Licence.login == login))).first()
            if row is None:
                return None
            cidrs = (await conn.execute(select(DatacentreNetwork.cidr).where(
                DatacentreNetwork.datacentre_id == row.datacentre_id))).scalars().all()
        return LicenceRecord(self._dates(row), row.licence_no, row.subtype, row.datacentre_id,
                             tuple(ipaddress.ip_network(c) for c in cidrs))

    async def licence_dates(self, since_seq: int = 0) -> tuple[list[LicenceDates], int]:
        """The standing fields of licences changed after `since_seq` (0: all of them), and the
        newest change_seq seen: the watcher's poll, which is one indexed range read when nothing
        changed."""
        cols = (Licence.login, Licence.status, Licence.issued, Licence.expires, Licence.suspended_until,
                Licence.status_reason, Licence.change_seq)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(*cols).where(Licence.change_seq > since_seq))).all()
        return [self._dates(r) for r in rows], max((r.change_seq for r in rows), default=since_seq)

    async def list_licences(self, *, reveal: bool = False) -> list[LicenceView]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(Licence).order_by(Licence.login))).all()
        return [self._view(r, reveal) for r in rows]

    async def show(self, login: str, *, reveal: bool = False) -> LicenceView:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(Licence).where(Licence.login == login))).first()
            if row is None:
                raise RegistryError(f"unknown login {login!r}")
            events = (await conn.execute(
                select(LicenceEvent.at, LicenceEvent.action, LicenceEvent.status, LicenceEvent.reason)
                .where(LicenceEvent.licence_id == row.id).order_by(LicenceEvent.id))).all()
        view = self._view(row, reveal)
        view.events.extend((_aware(at), action, LicenceStatus(status).value, reason)
                           for at, action, status, reason in events)
        return view

    async def logins_for_iin_bin(self, value: str) -> list[str]:
        """Logins registered to one IIN/BIN, found by the keyed hash (no decryption of the table)."""
        key = self.pii.index(parse_iin_bin(value).value)
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(select(Licence.login).where(Licence.iin_bin_index == key)
                                      .order_by(Licence.login))
            return list(rows.scalars())

    async def list_datacentres(self) -> list[tuple[str, str, str, list[str]]]:
        """(id, name, region, cidrs) of every data centre."""
        async with self.db.engine.connect() as conn:
            dcs = (await conn.execute(select(Datacentre.id, Datacentre.name, Datacentre.region)
                                      .order_by(Datacentre.id))).all()
            nets = (await conn.execute(select(DatacentreNetwork.datacentre_id, DatacentreNetwork.cidr)
                                       .order_by(DatacentreNetwork.id))).all()
        return [(i, n, r, [c for d, c in nets if d == i]) for i, n, r in dcs]

    async def is_empty(self) -> bool:
        async with self.db.engine.connect() as conn:
            return (await conn.execute(select(Datacentre.id).limit(1))).first() is None \
                and (await conn.execute(select(Licence.id).limit(1))).first() is None

    def _dates(self, row: Any) -> LicenceDates:
        return LicenceDates(row.login, LicenceStatus(row.status), row.issued, row.expires, row.suspended_until,
                            row.status_reason)

    def _view(self, row: Any, reveal: bool) -> LicenceView:
        iin_bin = self.pii.decrypt(row.iin_bin_enc, "licences.iin_bin")
        name = self.pii.decrypt(row.name_enc, "licences.name")
        dates = self._dates(row)
        return LicenceView(dates, row.licence_no, row.subtype, effective_status(dates, kz_today(self.clock())),
                           _aware(row.status_changed_at), row.datacentre_id, row.payout_address,
                           iin_bin if reveal else mask_iin_bin(iin_bin), name if reveal else mask_name(name))

    # ---- writes -----------------------------------------------------------------------------
    async def _begin_write(self, conn: AsyncConnection) -> None:
        await self.db.begin_write(conn)
        if self.db.dialect == "postgresql":
            await conn.exec_driver_sql(f"LOCK TABLE {', '.join(REGISTRY_TABLES)} IN SHARE ROW EXCLUSIVE MODE")

    async def _snapshot(self, conn: AsyncConnection) -> RegistrySnapshot:
        snap = RegistrySnapshot()
        for dc_id, owner in await conn.execute(select(Datacentre.id, Datacentre.owner_iin_bin_index)):
            snap.datacentre_owners[dc_id] = bytes(owner)
        for dc_id, cidr in await conn.execute(select(DatacentreNetwork.datacentre_id, DatacentreNetwork.cidr)):
            snap.networks.append((ipaddress.ip_network(cidr), dc_id))
        for login, licence_no in await conn.execute(select(Licence.login, Licence.licence_no)):
            snap.logins.add(login)
            snap.licence_nos.add(licence_no)
        return snap

    async def _next_change_seq(self, conn: AsyncConnection) -> int:
        # Inside the write lock, so two writers never take the same number and numbers become
        # visible in the order they were taken.
        return int((await conn.execute(select(func.coalesce(func.max(Licence.change_seq), 0)))).scalar_one()) + 1

    def _record(self, kind: str, payload: dict[str, Any]) -> None:
        """To the audit log (compliance/audit_events.py kinds and `change()` payload shape): what
        happened, to which licence number or data centre, never an IIN/BIN or a name."""
        if self.audit is not None:
            self.audit(kind, payload)

    async def import_datacentres(self, text: str, *, dry_run: bool = False) -> ImportReport:
        async with self.db.engine.connect() as conn:
            await self._begin_write(conn)
            rows, problems = check_datacentres(text, await self._snapshot(conn))
            if problems or dry_run or not rows:
                await conn.rollback()
                return ImportReport("datacentres", len(rows), problems, False)
            await conn.execute(insert(Datacentre), [
                {"id": r.id, "name": r.name, "region": r.region, "address": r.address,
                 "owner_iin_bin_enc": self.pii.encrypt(r.owner_iin_bin, "datacentres.owner_iin_bin"),
                 "owner_iin_bin_index": self.pii.index(r.owner_iin_bin)} for r in rows])
            await conn.execute(insert(DatacentreNetwork), [
                {"datacentre_id": r.id, "cidr": str(net)} for r in rows for net in r.networks])
            await conn.commit()
        log.info("event=datacentres_imported count=%d", len(rows))
        for r in rows:
            self._record("datacentre_change", {"action": "imported", "subject": r.id, "region": r.region,
                                               "cidrs": [str(n) for n in r.networks]})
        return ImportReport("datacentres", len(rows), [], True)

    async def import_licences(self, text: str, *, dry_run: bool = False,
                              address_check: Callable[[str], None] | None = None) -> ImportReport:
        now = self.clock()
        async with self.db.engine.connect() as conn:
            await self._begin_write(conn)
            rows, problems = check_licences(text, await self._snapshot(conn), self.pii.index, address_check)
            if problems or dry_run or not rows:
                await conn.rollback()
                return ImportReport("licences", len(rows), problems, False)
            seq = await self._next_change_seq(conn)
            await conn.execute(insert(Licence), [
                {"login": r.login, "change_seq": seq, "iin_bin_enc": self.pii.encrypt(r.iin_bin, "licences.iin_bin"),
                 "iin_bin_index": self.pii.index(r.iin_bin), "name_enc": self.pii.encrypt(r.name, "licences.name"),
                 "licence_no": r.licence_no, "subtype": r.subtype, "issued": r.issued, "expires": r.expires,
                 "status": r.status, "suspended_until": r.suspended_until, "status_reason": None,
                 "status_changed_at": now, "datacentre_id": r.datacentre, "payout_address": r.payout_address}
                for r in rows])
            inserted = await conn.execute(select(Licence.login, Licence.id).where(
                Licence.login.in_([r.login for r in rows])))
            ids = {login: licence_id for login, licence_id in inserted}
            await conn.execute(insert(LicenceEvent), [
                {"licence_id": ids[r.login], "at": now, "action": "imported", "status": r.status,
                 "suspended_until": r.suspended_until, "reason": "import"} for r in rows])
            await conn.commit()
        log.info("event=licences_imported count=%d", len(rows))
        for r in rows:
            self._record("licence_change", {
                "action": "imported", "subject": r.licence_no, "login": r.login, "status": r.status.value,
                "subtype": r.subtype, "issued": r.issued.isoformat(), "expires": r.expires.isoformat(),
                "datacentre": r.datacentre})
        return ImportReport("licences", len(rows), [], True)

    async def _change(self, login: str, action: str, reason: str, allowed: set[LicenceStatus],
                      status: LicenceStatus, until: date | None = None) -> LicenceView:
        if not reason.strip():
            raise RegistryError("a reason is required")
        now = self.clock()
        async with self.db.engine.connect() as conn:
            await self._begin_write(conn)
            row = (await conn.execute(select(Licence.id, Licence.status, Licence.licence_no)
                                      .where(Licence.login == login))).first()
            if row is None:
                await conn.rollback()
                raise RegistryError(f"unknown login {login!r}")
            before = LicenceStatus(row.status)
            if before not in allowed:
                await conn.rollback()
                raise RegistryError(f"login {login!r}: the licence is {before.value}, not "
                                    f"{' or '.join(sorted(s.value for s in allowed))}; nothing {action}")
            await conn.execute(update(Licence).where(Licence.id == row.id).values(
                status=status, suspended_until=until, status_reason=reason, status_changed_at=now,
                change_seq=await self._next_change_seq(conn)))
            await conn.execute(insert(LicenceEvent).values(licence_id=row.id, at=now, action=action, status=status,
                                                           suspended_until=until, reason=reason))
            await conn.commit()
        log.info("event=licence_%s login=%s licence_no=%s from=%s until=%s", action, login, row.licence_no,
                 before.value, until.isoformat() if until else "-")
        self._record("licence_change", {"action": action, "subject": row.licence_no, "login": login,
                                        "from": before.value, "to": status.value, "reason": reason,
                                        "suspended_until": until.isoformat() if until else None})
        return await self.show(login)

    async def suspend(self, login: str, until: date, reason: str) -> LicenceView:
        """Suspend until `until` (exclusive: the first day the licence is valid again, KZ time)."""
        today = kz_today(self.clock())
        if until <= today:
            raise RegistryError(f"--until {until.isoformat()} is not after today ({today.isoformat()}, KZ time)")
        if until > add_months(today, MAX_SUSPENSION_MONTHS):
            raise RegistryError(f"--until {until.isoformat()}: a suspension lasts at most "
                                f"{MAX_SUSPENSION_MONTHS} months")
        return await self._change(login, "suspended", reason, {LicenceStatus.ACTIVE, LicenceStatus.SUSPENDED},
                                  LicenceStatus.SUSPENDED, until)

    async def revoke(self, login: str, reason: str) -> LicenceView:
        return await self._change(login, "revoked", reason, {LicenceStatus.ACTIVE, LicenceStatus.SUSPENDED},
                                  LicenceStatus.REVOKED)

    async def reinstate(self, login: str, reason: str) -> LicenceView:
        """Back to active after a suspension, or after a revocation recorded in error. An expired
        licence is not reinstated: its renewal is a new licence, imported."""
        return await self._change(login, "reinstated", reason, {LicenceStatus.SUSPENDED, LicenceStatus.REVOKED},
                                  LicenceStatus.ACTIVE)
