"""The licence registry: async queries for the authorizer and the watcher, status changes,
renewals, the all-or-nothing CSV imports, and the rotation of the key that encrypts personal data.

Every write runs in one transaction that holds the registry's write lock from its first statement
(BEGIN IMMEDIATE on SQLite, LOCK TABLE on PostgreSQL), so two imports cannot both pass the
duplicate and overlap checks against a state the other is changing. Personal data goes in and out
only through the PiiBox; logs name logins, licence numbers and counts, never IIN/BINs or names.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Callable, NamedTuple

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pool.db import Database

from .csv_import import (IpNetwork, RegistrySnapshot, RenewalRow, RowProblem, check_datacentres, check_licences,
                         check_renewals, renewal_problems)
from .iin import mask_iin_bin, parse_iin_bin
from .models import Datacentre, DatacentreNetwork, Licence, LicenceEvent
from .pii import PiiBox, PiiDecryptError
from .standing import KZ_TIME, Clock, LicenceDates, LicenceStatus, effective_status, kz_today, standing, utc_now

log = logging.getLogger("kzpool.compliance.registry")

AuditSink = Callable[[str, dict[str, Any]], None]
MAX_SUSPENSION_MONTHS = 6      # the law suspends a licence for 1 to 6 months
REGISTRY_TABLES = ("licence_events", "licences", "datacentre_networks", "datacentres")


PII_ROTATION = "pii_key_rotation"      # the audit record kind of a PII key rotation
# The encrypted columns: (table, column, associated data); the blob is <column>_enc, the IIN/BIN's
# lookup index <column>_index.
PII_FIELDS = (("datacentres", "owner_iin_bin", "datacentres.owner_iin_bin"),
              ("licences", "iin_bin", "licences.iin_bin"),
              ("licences", "name", "licences.name"))


class RegistryError(ValueError):
    """A change the registry refuses (unknown login, wrong state, bad date); safe to print."""


class RenewalRefused(RegistryError):
    """A renewal the registry refuses. `code` names the first reason (unknown_login,
    licence_revoked, expires_not_after_issued, ...); `problems` holds every (column, code, text)."""

    def __init__(self, login: str, problems: Sequence[tuple[str, str, str]]) -> None:
        self.login = login
        self.problems = list(problems)
        self.code = self.problems[0][1]
        super().__init__(f"login {login!r}: renewal refused: "
                         + "; ".join(f"{code}: {text}" for _, code, text in self.problems))


class PiiKeyRefused(RegistryError):
    """A PII key the registry cannot work with; `code` names why (pii_key_unchanged,
    pii_undecryptable, pii_index_mismatch, pii_key_mismatch). Names rows by id, never by content."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        super().__init__(f"{code}: {text}")


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


class LicenceEventView(NamedTuple):
    """One line of a licence's history, with the licence (number, dates) in force after it."""
    at: datetime
    action: str
    status: str
    reason: str
    licence_no: str
    issued: date
    expires: date
    suspended_until: date | None


@dataclass(frozen=True, slots=True)
class PiiCheck:
    """Whether every encrypted field of the registry decrypts with a key and its index matches."""
    key_id: str
    datacentres: int
    licences: int
    bad: list[str]                  # "licences id 7: licences.name does not decrypt", no content

    @property
    def ok(self) -> bool:
        return not self.bad


@dataclass(frozen=True, slots=True)
class PiiRotation:
    old_key_id: str
    new_key_id: str
    datacentres: int
    licences: int


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
    events: list[LicenceEventView] = field(default_factory=list)


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
                select(LicenceEvent.at, LicenceEvent.action, LicenceEvent.status, LicenceEvent.reason,
                       LicenceEvent.licence_no, LicenceEvent.issued, LicenceEvent.expires,
                       LicenceEvent.suspended_until)
                .where(LicenceEvent.licence_id == row.id).order_by(LicenceEvent.id))).all()
        view = self._view(row, reveal)
        view.events.extend(LicenceEventView(_aware(e.at), e.action, LicenceStatus(e.status).value, e.reason,
                                            e.licence_no, e.issued, e.expires, e.suspended_until)
                           for e in events)
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

    async def _check_key(self, conn: AsyncConnection) -> None:
        """Before writing personal data: the registry's existing data decrypts with this process's
        key. A process still holding a key rotated away would otherwise write blobs and indexes
        no one can read or find (one row read, one decryption)."""
        for table, column, field_name in PII_FIELDS[:2]:
            model = Datacentre if table == "datacentres" else Licence
            blob = (await conn.execute(select(getattr(model, f"{column}_enc")).limit(1))).scalar()
            if blob is None:
                continue
            try:
                self.pii.decrypt(bytes(blob), field_name)
            except PiiDecryptError:
                await conn.rollback()
                raise PiiKeyRefused("pii_key_mismatch", f"the registry's personal data does not decrypt with this "
                                    f"PII key (key id {self.pii.key_id}); was the key rotated? Use the key "
                                    "`kzpool licences pii-check` accepts; nothing written") from None

    async def import_datacentres(self, text: str, *, dry_run: bool = False) -> ImportReport:
        async with self.db.engine.connect() as conn:
            await self._begin_write(conn)
            await self._check_key(conn)
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
            await self._check_key(conn)
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
                 "suspended_until": r.suspended_until, "reason": "import", "licence_no": r.licence_no,
                 "issued": r.issued, "expires": r.expires} for r in rows])
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
            row = (await conn.execute(select(Licence.id, Licence.status, Licence.licence_no, Licence.issued,
                                             Licence.expires).where(Licence.login == login))).first()
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
                                                           suspended_until=until, reason=reason,
                                                           licence_no=row.licence_no, issued=row.issued,
                                                           expires=row.expires))
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
        licence is not reinstated: it is renewed (`renew`)."""
        return await self._change(login, "reinstated", reason, {LicenceStatus.SUSPENDED, LicenceStatus.REVOKED},
                                  LicenceStatus.ACTIVE)

    # ---- renewals ---------------------------------------------------------------------------
    async def renew(self, login: str, licence_no: str, issued: date, expires: date, reason: str, *,
                    after_revocation: bool = False, operator: str = "") -> LicenceView:
        """Record the renewal of `login`'s licence: a new licence number and/or new dates (Kazakhstan
        calendar dates, `expires` exclusive). Raises RenewalRefused naming every problem.

        A revoked licence is not renewed: revocation ends a licence, and the law (Law No. 193-VII as
        summarised in KZ-REGULATION.md) provides no renewal of one, only a new licence. With
        `after_revocation` the operator records that new licence: it needs a number other than the
        revoked one and an issue date on or after the revocation (a revocation recorded in error
        is undone with `reinstate`, not here)."""
        problems = renewal_problems(login, licence_no, issued, expires, reason)
        if problems:
            raise RenewalRefused(login, problems)
        row = RenewalRow(0, login, licence_no, issued, expires, reason)
        refused = await self._renew([row], after_revocation=after_revocation, operator=operator, dry_run=False)
        if refused:
            raise RenewalRefused(login, refused[0][1])
        return await self.show(login)

    async def import_renewals(self, text: str, *, dry_run: bool = False, operator: str = "") -> ImportReport:
        """A renewals file (login,licence_no,issued,expires,reason), all or nothing. A revoked
        licence is a bad row here: it is renewed alone, with `after_revocation`."""
        rows, problems = check_renewals(text)
        # The rows that pass the file's own checks are judged against the registry too (not
        # applied when the file has problems), so one report names every bad row.
        refused = await self._renew(rows, after_revocation=False, operator=operator,
                                    dry_run=dry_run or bool(problems)) if rows else []
        found = problems + [RowProblem(r.row, column, f"{code}: {text_}")
                            for r, cells in refused for column, code, text_ in cells]
        read = len(rows) + len({p.row for p in problems})
        return ImportReport("renewals", read, sorted(found), not found and not dry_run)

    async def _renew(self, rows: Sequence[RenewalRow], *, after_revocation: bool, operator: str,
                     dry_run: bool) -> list[tuple[RenewalRow, list[tuple[str, str, str]]]]:
        """Judge every row against the registry under the write lock; apply all or none. Returns
        the refused rows with their (column, code, text) problems."""
        now = self.clock()
        today = kz_today(now)
        async with self.db.engine.connect() as conn:
            await self._begin_write(conn)
            current = {r.login: r for r in (await conn.execute(select(
                Licence.id, Licence.login, Licence.licence_no, Licence.status, Licence.issued, Licence.expires,
                Licence.suspended_until, Licence.status_reason, Licence.status_changed_at)
                .where(Licence.login.in_([r.login for r in rows])))).all()}
            # Every licence number a licence ever had, current or renewed away: numbers are never
            # handed from one login to another.
            owners: dict[str, set[int]] = {}
            for number, licence_id in (await conn.execute(select(Licence.licence_no, Licence.id))).all():
                owners.setdefault(number, set()).add(licence_id)
            for number, licence_id in (await conn.execute(
                    select(LicenceEvent.licence_no, LicenceEvent.licence_id).distinct())).all():
                owners.setdefault(number, set()).add(licence_id)
            refused: list[tuple[RenewalRow, list[tuple[str, str, str]]]] = []
            for r in rows:
                cells = _judge_renewal(r, current.get(r.login), owners, today, after_revocation)
                if cells:
                    refused.append((r, cells))
            if refused or dry_run:
                await conn.rollback()
                return refused
            seq = await self._next_change_seq(conn)
            applied: list[tuple[RenewalRow, Any, LicenceStatus, date | None]] = []
            for r in rows:
                cur = current[r.login]
                status, until, status_reason = _status_after_renewal(cur, today, r.reason)
                await conn.execute(update(Licence).where(Licence.id == cur.id).values(
                    licence_no=r.licence_no, issued=r.issued, expires=r.expires, status=status,
                    suspended_until=until, status_reason=status_reason, status_changed_at=now, change_seq=seq))
                await conn.execute(insert(LicenceEvent).values(
                    licence_id=cur.id, at=now, action="renewed", status=status, suspended_until=until,
                    reason=r.reason, licence_no=r.licence_no, issued=r.issued, expires=r.expires))
                applied.append((r, cur, status, until))
            await conn.commit()
        for r, cur, status, until in applied:
            log.info("event=licence_renewed login=%s licence_no=%s previous_licence_no=%s issued=%s expires=%s",
                     r.login, r.licence_no, cur.licence_no, r.issued.isoformat(), r.expires.isoformat())
            before = effective_status(self._dates(cur), today)
            self._record("licence_change", {
                "action": "renewed", "subject": r.licence_no, "login": r.login, "reason": r.reason,
                "issued": r.issued.isoformat(), "expires": r.expires.isoformat(),
                "previous": {"licence_no": cur.licence_no, "issued": cur.issued.isoformat(),
                             "expires": cur.expires.isoformat(), "status": before},
                "from": LicenceStatus(cur.status).value, "to": status.value,
                "suspended_until": until.isoformat() if until else None,
                "after_revocation": LicenceStatus(cur.status) is LicenceStatus.REVOKED, "operator": operator or None})
        return []

    # ---- personal data key ------------------------------------------------------------------
    async def _pii_rows(self, conn: AsyncConnection) -> list[tuple[str, str, str, bytes, bytes | None]]:
        """(table, row id, associated data, blob, index or None) of every encrypted field."""
        out: list[tuple[str, str, str, bytes, bytes | None]] = []
        for dc_id, blob, index in await conn.execute(select(
                Datacentre.id, Datacentre.owner_iin_bin_enc, Datacentre.owner_iin_bin_index).order_by(Datacentre.id)):
            out.append(("datacentres", str(dc_id), "datacentres.owner_iin_bin", bytes(blob), bytes(index)))
        for licence_id, iin_blob, iin_index, name_blob in await conn.execute(select(
                Licence.id, Licence.iin_bin_enc, Licence.iin_bin_index, Licence.name_enc).order_by(Licence.id)):
            out.append(("licences", str(licence_id), "licences.iin_bin", bytes(iin_blob), bytes(iin_index)))
            out.append(("licences", str(licence_id), "licences.name", bytes(name_blob), None))
        return out

    @staticmethod
    def _open_all(rows: list[tuple[str, str, str, bytes, bytes | None]], box: PiiBox
                  ) -> tuple[dict[tuple[str, str, str], str], list[str]]:
        """Every field decrypted with `box`, and the problems, named by table and row id."""
        plain: dict[tuple[str, str, str], str] = {}
        bad: list[str] = []
        for table, row_id, field_name, blob, index in rows:
            try:
                value = box.decrypt(blob, field_name)
            except PiiDecryptError:
                bad.append(f"{table} id {row_id}: {field_name} does not decrypt with key {box.key_id}")
                continue
            if index is not None and not hmac.compare_digest(index, box.index(value)):
                bad.append(f"{table} id {row_id}: {field_name}: its lookup index does not match key {box.key_id}")
                continue
            plain[table, row_id, field_name] = value
        return plain, bad

    async def check_pii(self) -> PiiCheck:
        """Decrypt every encrypted field and recompute every index with this registry's key."""
        async with self.db.engine.connect() as conn:
            rows = await self._pii_rows(conn)
        _, bad = self._open_all(rows, self.pii)
        return PiiCheck(self.pii.key_id, len({r[1] for r in rows if r[0] == "datacentres"}),
                        len({r[1] for r in rows if r[0] == "licences"}), bad)

    async def rotate_pii_key(self, new: PiiBox, *, operator: str = "") -> PiiRotation:
        """Re-encrypt every encrypted field and recompute every lookup index with `new`, in one
        transaction under the registry's write lock: all or nothing. Refused (PiiKeyRefused, the
        rows named by id) when this registry's key cannot decrypt a field or its index does not
        match. Afterwards this registry uses `new`; every other process needs the new key."""
        old = self.pii
        if new.key_id == old.key_id:
            raise PiiKeyRefused("pii_key_unchanged", f"the new key is the key in use (key id {old.key_id})")
        async with self.db.engine.connect() as conn:
            await self._begin_write(conn)
            rows = await self._pii_rows(conn)
            plain, bad = self._open_all(rows, old)
            if bad:
                await conn.rollback()
                code = "pii_undecryptable" if any("does not decrypt" in b for b in bad) else "pii_index_mismatch"
                raise PiiKeyRefused(code, f"{len(bad)} field(s) do not open with the current key, nothing "
                                    "re-encrypted: " + "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""))
            dcs = sorted({row_id for table, row_id, *_ in rows if table == "datacentres"})
            lics = sorted({int(row_id) for table, row_id, *_ in rows if table == "licences"})
            if dcs:
                await conn.execute(
                    update(Datacentre).where(Datacentre.id == bindparam("dc_id"))
                    .values(owner_iin_bin_enc=bindparam("blob"), owner_iin_bin_index=bindparam("ix")),
                    [{"dc_id": d, **_sealed(new, plain["datacentres", d, "datacentres.owner_iin_bin"],
                                            "datacentres.owner_iin_bin")} for d in dcs])
            if lics:
                await conn.execute(
                    update(Licence).where(Licence.id == bindparam("lic_id"))
                    .values(iin_bin_enc=bindparam("blob"), iin_bin_index=bindparam("ix"), name_enc=bindparam("name")),
                    [{"lic_id": i, **_sealed(new, plain["licences", str(i), "licences.iin_bin"], "licences.iin_bin"),
                      "name": new.encrypt(plain["licences", str(i), "licences.name"], "licences.name")} for i in lics])
            # Read back inside the transaction: what commits is what the new key opens.
            reread, unreadable = self._open_all(await self._pii_rows(conn), new)
            if unreadable or reread != plain:
                await conn.rollback()
                raise PiiKeyRefused("pii_rotation_failed", "the re-encrypted data did not read back with the new "
                                    "key; nothing changed")
            await conn.commit()
        self.pii = new
        result = PiiRotation(old.key_id, new.key_id, len(dcs), len(lics))
        log.info("event=pii_key_rotated old_key_id=%s new_key_id=%s datacentres=%d licences=%d",
                 result.old_key_id, result.new_key_id, result.datacentres, result.licences)
        self._record(PII_ROTATION, {
            "action": "rotated", "subject": "pii_key", "old_key_id": result.old_key_id,
            "new_key_id": result.new_key_id, "datacentres": result.datacentres, "licences": result.licences,
            "fields": [f for _, _, f in PII_FIELDS], "operator": operator or None})
        return result


def _sealed(box: PiiBox, iin_bin: str, field_name: str) -> dict[str, bytes]:
    return {"blob": box.encrypt(iin_bin, field_name), "ix": box.index(iin_bin)}


def _kz_date(moment: datetime) -> date:
    return _aware(moment).astimezone(KZ_TIME).date()


def _judge_renewal(r: RenewalRow, cur: Any, owners: dict[str, set[int]], today: date,
                   after_revocation: bool) -> list[tuple[str, str, str]]:
    """The checks of a renewal against the licence it renews: (column, error name, text)."""
    if cur is None:
        return [("login", "unknown_login", f"login {r.login!r} is not in the registry (new licences are imported)")]
    out: list[tuple[str, str, str]] = []
    status = LicenceStatus(cur.status)
    if status is LicenceStatus.REVOKED:
        if not after_revocation:
            out.append(("login", "licence_revoked",
                        f"licence {cur.licence_no} was revoked; a revoked licence is not renewed. A new licence "
                        "issued after the revocation is recorded with --after-revocation (alone, not from a file); "
                        "a revocation recorded in error is undone with `kzpool licences reinstate`"))
        else:
            if r.licence_no == cur.licence_no:
                out.append(("licence_no", "revoked_licence_no",
                            f"{r.licence_no} is the revoked licence; a licence after a revocation has a new number"))
            revoked_on = _kz_date(cur.status_changed_at)
            if r.issued < revoked_on:
                out.append(("issued", "issued_before_revocation",
                            f"issued {r.issued.isoformat()} is before the revocation on {revoked_on.isoformat()}"))
    elif after_revocation:
        out.append(("login", "licence_not_revoked",
                    f"--after-revocation given, but the licence is {status.value}"))
    others = owners.get(r.licence_no, set()) - {cur.id}
    if others:
        out.append(("licence_no", "duplicate_licence_no",
                    f"{r.licence_no} is (or was) the licence number of another login"))
    if r.expires <= cur.expires:
        out.append(("expires", "renewal_not_later",
                    f"expires {r.expires.isoformat()} is not after the current licence's {cur.expires.isoformat()}"))
    if r.expires <= today:
        out.append(("expires", "renewal_already_expired",
                    f"expires {r.expires.isoformat()} is not after today ({today.isoformat()}, Kazakhstan time)"))
    current = LicenceDates(cur.login, status, cur.issued, cur.expires, cur.suspended_until, cur.status_reason)
    if r.issued > today and standing(current, today).valid:
        out.append(("issued", "renewal_not_yet_in_force",
                    f"the renewal is valid from {r.issued.isoformat()} and licence {cur.licence_no} is valid today: "
                    f"record it on or after {r.issued.isoformat()} (Kazakhstan time); recorded now it would stop "
                    "the licence in force"))
    return out


def _status_after_renewal(cur: Any, today: date, reason: str) -> tuple[LicenceStatus, date | None, str | None]:
    """A renewal makes the licence active, except that a suspension still running stays: a
    suspension is a sanction for a period, not tied to the licence's dates."""
    if LicenceStatus(cur.status) is LicenceStatus.SUSPENDED and (
            cur.suspended_until is None or cur.suspended_until > today):
        return LicenceStatus.SUSPENDED, cur.suspended_until, cur.status_reason
    return LicenceStatus.ACTIVE, None, reason
