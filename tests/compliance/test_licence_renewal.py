"""Licence renewal on a real registry (SQLite and PostgreSQL): an expired login refused, renewed by
another process, seen by the LicenceWatcher within a poll (the authorizer's kept record dropped) and
authorized; the history keeps the old licence; every refusal named and changing nothing; revoked
licences only with --after-revocation; the renewals file all or nothing; migration 0007's backfill."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, text

from compliance.authorizer import RegistryAuthorizer
from compliance.backoff import RefusalBackoff
from compliance.pii import PiiBox
from compliance.registry import LicenceRegistry, RenewalRefused
from compliance.watcher import LicenceWatcher
from db_fixtures import fresh_database_url
from pool.db import Database, alembic_config
from stratum.interfaces import Account, Peer, Refusal

from registry_fixtures import (DANA_IIN, DATACENTRES, EVERY_PERSONAL_VALUE, GOOD_LICENCES, PII_KEY,  # noqa: F401
                               SettableClock, clock, licence_line, licences_csv, registry, registry_db,
                               registry_dump)

# NOON_KZ is 15 June 2026: dana's licence (issued 2023-06-10) ended on 10 June, its first day without.
DANA = licences_csv(licence_line("dana", DANA_IIN, "Dana Seitova IE", "KZ-DM-0004", issued="2023-06-10"))
PEER = Peer("192.0.2.10", 40000)          # inside dc-ala, dana's data centre


class Calls(list[tuple[str, str]]):
    def __call__(self, login: str, text: str) -> None:
        self.append((login, text))


async def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
async def seeded(registry: LicenceRegistry) -> LicenceRegistry:
    assert (await registry.import_datacentres(DATACENTRES)).applied
    assert (await registry.import_licences(GOOD_LICENCES)).applied
    assert (await registry.import_licences(DANA)).applied
    return registry


def other_process(registry_db: Database, clock: SettableClock, audit: Any = None) -> LicenceRegistry:
    """A second handle on the same database, as `kzpool licences renew` in another process."""
    return LicenceRegistry(Database(registry_db.url.render_as_string(hide_password=False)), PiiBox(PII_KEY),
                           clock=clock, audit=audit)


async def test_expired_login_refused_renewed_then_authorized(seeded: LicenceRegistry, registry_db: Database,
                                                            clock: SettableClock) -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    auth = RegistryAuthorizer(seeded, True, clock, backoff=RefusalBackoff(base_s=0.0, max_s=0.0), sleep=no_sleep)
    calls = Calls()
    watcher = LicenceWatcher(seeded, calls, clock=clock, authorizer=auth)
    await watcher.poll_once()
    assert not auth.is_still_valid("dana")

    refused = await auth.authorize("dana.rig1", "x", PEER)
    assert isinstance(refused, Refusal) and refused.reason == "licence_expired"
    assert "expired on 2026-06-10" in refused.message
    reads = auth.registry_reads

    cli = other_process(registry_db, clock, audit=lambda kind, payload: records.append((kind, payload)))
    try:
        view = await cli.renew("dana", "KZ-DM-0104", date(2026, 6, 12), date(2029, 6, 12),
                               "renewal issued by the ministry", operator="aigerim")
    finally:
        await cli.db.close()
    assert (view.licence_no, view.effective_status) == ("KZ-DM-0104", "active")

    # Until the watcher polls, the kept record (30 s) still answers: the renewal is not seen yet.
    assert isinstance(await auth.authorize("dana.rig1", "x", PEER), Refusal)
    assert auth.registry_reads == reads
    # One poll: the row's change_seq moved, so the watcher drops the kept record and marks it valid.
    assert await watcher.poll_once() == []
    assert auth.is_still_valid("dana")
    accepted = await auth.authorize("dana.rig1", "x", PEER)
    assert accepted == Account(login="dana", worker="dana.rig1")
    assert auth.registry_reads == reads + 1

    # The history keeps the old licence; the audit record names both, and nothing personal.
    shown = await seeded.show("dana")
    assert [(e.action, e.licence_no, e.issued, e.expires) for e in shown.events] == [
        ("imported", "KZ-DM-0004", date(2023, 6, 10), date(2026, 6, 10)),
        ("renewed", "KZ-DM-0104", date(2026, 6, 12), date(2029, 6, 12))]
    assert shown.events[-1].reason == "renewal issued by the ministry"
    assert records == [("licence_change", {
        "action": "renewed", "subject": "KZ-DM-0104", "login": "dana", "reason": "renewal issued by the ministry",
        "issued": "2026-06-12", "expires": "2029-06-12",
        "previous": {"licence_no": "KZ-DM-0004", "issued": "2023-06-10", "expires": "2026-06-10",
                     "status": "expired"},
        "from": "active", "to": "active", "suspended_until": None, "after_revocation": False,
        "operator": "aigerim"})]
    assert not [v for v in EVERY_PERSONAL_VALUE if v in json.dumps(records)]


async def test_renewal_keeps_the_number_and_a_running_suspension(seeded: LicenceRegistry) -> None:
    # Same number, later dates: a renewal ahead of expiry (issued today).
    view = await seeded.renew("alice", "KZ-DM-0001", date(2026, 6, 15), date(2029, 6, 15), "early renewal")
    assert (view.licence_no, view.dates.expires, view.effective_status) == ("KZ-DM-0001", date(2029, 6, 15), "active")
    # caspian is suspended until 2026-08-01: a renewal does not lift a sanction.
    view = await seeded.renew("caspian", "KZ-DM-0003", date(2026, 6, 1), date(2029, 6, 1), "renewal")
    assert view.effective_status == "suspended" and view.dates.suspended_until == date(2026, 8, 1)
    assert [e.action for e in view.events] == ["imported", "renewed"]


async def test_a_revoked_licence_needs_after_revocation_and_a_new_licence(seeded: LicenceRegistry,
                                                                          registry_db: Database,
                                                                          clock: SettableClock) -> None:
    await seeded.revoke("bolat", "order 12 of the ministry")
    before = await registry_dump(registry_db)
    with pytest.raises(RenewalRefused) as refused:
        await seeded.renew("bolat", "KZ-DM-0202", date(2026, 6, 15), date(2029, 6, 15), "renewal")
    assert refused.value.code == "licence_revoked" and "--after-revocation" in str(refused.value)
    with pytest.raises(RenewalRefused) as refused:
        await seeded.renew("bolat", "KZ-DM-0002", date(2026, 6, 1), date(2029, 6, 1), "new licence",
                           after_revocation=True)
    assert [p[1] for p in refused.value.problems] == ["revoked_licence_no", "issued_before_revocation"]
    with pytest.raises(RenewalRefused) as refused:
        await seeded.renew("alice", "KZ-DM-0201", date(2026, 6, 15), date(2029, 6, 15), "x", after_revocation=True)
    assert refused.value.code == "licence_not_revoked"
    assert await registry_dump(registry_db) == before

    clock.advance(days=20)
    view = await seeded.renew("bolat", "KZ-DM-0202", date(2026, 7, 5), date(2029, 7, 5),
                              "new licence after the revocation, ministry letter 44", after_revocation=True)
    assert (view.licence_no, view.effective_status, view.dates.status.value) == ("KZ-DM-0202", "active", "active")
    assert [(e.action, e.status, e.licence_no) for e in view.events] == [
        ("imported", "active", "KZ-DM-0002"), ("revoked", "revoked", "KZ-DM-0002"),
        ("renewed", "active", "KZ-DM-0202")]


@pytest.mark.parametrize("login, licence_no, issued, expires, reason, code", [
    ("nobody", "KZ-DM-0900", "2026-06-15", "2029-06-15", "r", "unknown_login"),
    ("dana", "KZ-DM-0900", "2026-06-15", "2026-06-15", "r", "expires_not_after_issued"),
    ("dana", "KZ-DM-0900", "2026-06-15", "2029-06-16", "r", "licence_too_long"),
    ("dana", "KZ-DM-0900", "2026-06-15", "2029-06-15", " ", "reason_required"),
    ("dana", "", "2026-06-15", "2029-06-15", "r", "licence_no_required"),
    ("dana", "KZ-DM-0002", "2026-06-15", "2029-06-15", "r", "duplicate_licence_no"),    # bolat's
    ("dana", "KZ-DM-0900", "2023-06-01", "2026-06-01", "r", "renewal_not_later"),
    ("dana", "KZ-DM-0900", "2023-06-14", "2026-06-14", "r", "renewal_already_expired"),
    ("alice", "KZ-DM-0900", "2026-07-01", "2029-07-01", "r", "renewal_not_yet_in_force"),  # alice valid today
    ("dana.rig", "KZ-DM-0900", "2026-06-15", "2029-06-15", "r", "bad_login"),
])
async def test_every_refusal_is_named_and_changes_nothing(seeded: LicenceRegistry, registry_db: Database,
                                                          login: str, licence_no: str, issued: str, expires: str,
                                                          reason: str, code: str) -> None:
    before = await registry_dump(registry_db)
    with pytest.raises(RenewalRefused) as refused:
        await seeded.renew(login, licence_no, date.fromisoformat(issued), date.fromisoformat(expires), reason)
    assert refused.value.code == code, refused.value.problems
    assert await registry_dump(registry_db) == before


async def test_a_number_renewed_away_never_goes_to_another_login(seeded: LicenceRegistry) -> None:
    await seeded.renew("dana", "KZ-DM-0104", date(2026, 6, 12), date(2029, 6, 12), "renewal")
    with pytest.raises(RenewalRefused) as refused:          # dana's old number, now in the history only
        await seeded.renew("alice", "KZ-DM-0004", date(2026, 6, 15), date(2029, 6, 15), "renewal")
    assert refused.value.code == "duplicate_licence_no"


def renewals_csv(*lines: str) -> str:
    return "\n".join(["login,licence_no,issued,expires,reason", *lines]) + "\n"


async def test_renewals_file_is_all_or_nothing(seeded: LicenceRegistry, registry_db: Database) -> None:
    await seeded.revoke("bolat", "order 12")
    before = await registry_dump(registry_db)
    bad = renewals_csv("dana,KZ-DM-0104,2026-06-12,2029-06-12,",                 # row 2: good
                       "bolat,KZ-DM-0202,2026-06-15,2029-06-15,new licence",     # row 3: revoked
                       "alice,KZ-DM-0104,2026-06-15,2029-06-15,",                # row 4: dana's new number again
                       "erlan,KZ-DM-0300,2026-06-15,not-a-date,",                # row 5
                       "nobody,KZ-DM-0301,2026-06-15,2029-06-15,")               # row 6
    report = await seeded.import_renewals(bad)
    assert not report.applied
    assert report.lines() == [
        "row 3: login: licence_revoked: licence KZ-DM-0002 was revoked; a revoked licence is not renewed. A new "
        "licence issued after the revocation is recorded with --after-revocation (alone, not from a file); a "
        "revocation recorded in error is undone with `kzpool licences reinstate`",
        "row 4: licence_no: duplicate_licence_no: also row 2",
        "row 5: expires: date error: expected YYYY-MM-DD",
        "row 6: login: unknown_login: login 'nobody' is not in the registry (new licences are imported)"]
    assert await registry_dump(registry_db) == before

    good = renewals_csv("dana,KZ-DM-0104,2026-06-12,2029-06-12,", "alice,KZ-DM-0001,2026-06-15,2029-06-15,early")
    dry = await seeded.import_renewals(good, dry_run=True)
    assert dry.ok and not dry.applied and await registry_dump(registry_db) == before
    report = await seeded.import_renewals(good)
    assert report.applied and report.rows == 2
    views = {v.dates.login: v for v in await seeded.list_licences()}
    assert (views["dana"].licence_no, views["dana"].effective_status) == ("KZ-DM-0104", "active")
    assert (await seeded.show("dana")).events[-1].reason == "renewal"
    assert views["alice"].dates.expires == date(2029, 6, 15)


async def test_migration_0007_fills_the_history_from_the_licence(tmp_path: Path, registry_db: Database) -> None:
    backend = registry_db.dialect if registry_db.dialect == "postgresql" else "sqlite"
    (tmp_path / "0006").mkdir()
    async with fresh_database_url(backend, tmp_path / "0006") as url:
        db = Database(url)
        try:
            await db.upgrade("0006")
            async with db.engine.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO datacentres (id, name, region, address, owner_iin_bin_enc, owner_iin_bin_index) "
                    "VALUES ('dc-1', 'DC', 'Almaty', 'street', :b, :b)"), {"b": b"\x01" * 32})
                await conn.execute(text(
                    "INSERT INTO licences (id, login, iin_bin_enc, iin_bin_index, name_enc, licence_no, subtype, "
                    "issued, expires, status, status_changed_at, change_seq, datacentre_id, payout_address) VALUES "
                    "(1, 'old', :b, :b, :b, 'KZ-OLD-1', 'I', :issued, :expires, 'suspended', :at, 1, 'dc-1', 'x')"),
                    {"b": b"\x01" * 32, "issued": date(2024, 1, 5), "expires": date(2027, 1, 5),
                     "at": NOON_AWARE})
                for action in ("imported", "suspended"):
                    await conn.execute(text(
                        "INSERT INTO licence_events (licence_id, at, action, status, reason) "
                        "VALUES (1, :at, :action, 'active', 'r')"), {"at": NOON_AWARE, "action": action})
            await db.upgrade()
            async with db.engine.connect() as conn:
                rows = (await conn.execute(text(
                    "SELECT action, licence_no, issued, expires FROM licence_events ORDER BY id"))).all()
            as_dates = [(a, n, date.fromisoformat(str(i)), date.fromisoformat(str(e))) for a, n, i, e in rows]
            assert as_dates == [("imported", "KZ-OLD-1", date(2024, 1, 5), date(2027, 1, 5)),
                                ("suspended", "KZ-OLD-1", date(2024, 1, 5), date(2027, 1, 5))]

            def down(sync_conn: Connection) -> None:
                cfg = alembic_config(db.url)
                cfg.attributes["connection"] = sync_conn
                command.downgrade(cfg, "0006")
            async with db.engine.begin() as conn:
                await conn.run_sync(down)
            async with db.engine.connect() as conn:
                columns = await conn.run_sync(
                    lambda c: [col["name"] for col in c.dialect.get_columns(c, "licence_events")])
            assert "licence_no" not in columns and "reason" in columns
        finally:
            await db.close()


NOON_AWARE = SettableClock().now


async def test_today_is_the_kazakhstan_date(seeded: LicenceRegistry, registry_db: Database,
                                           clock: SettableClock) -> None:
    """A renewal ending on 16 June is still worth recording at 23:59:59 on 15 June in Astana
    (18:59:59 UTC), and already over one second later, though it is still 15 June in UTC."""
    clock.now = clock.now.replace(hour=19, minute=0, second=0)            # 00:00 on 16 June in Astana
    before = await registry_dump(registry_db)
    with pytest.raises(RenewalRefused) as refused:
        await seeded.renew("dana", "KZ-DM-0104", date(2023, 6, 16), date(2026, 6, 16), "late paperwork")
    assert refused.value.code == "renewal_already_expired" and "2026-06-16, Kazakhstan time" in str(refused.value)
    assert await registry_dump(registry_db) == before
    clock.advance(seconds=-1)
    view = await seeded.renew("dana", "KZ-DM-0104", date(2023, 6, 16), date(2026, 6, 16), "late paperwork")
    assert view.effective_status == "active"
