"""Allotted hours in Kazakhstan time (UTC+5): parsing, day-ahead CSV import, precedence, and the
enforcer acting at the hour across midnight and a month boundary, with a fake clock."""
from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from compliance.audit_chain import canonical_json, normalise_payload
from compliance.audit_keys import load_signing_key
from compliance.audit_models import AuditRecord
from compliance.audit_verify import verify_database
from compliance.curtailment import CurtailmentEnforcer
from compliance.energy_cli import main as energy_main
from compliance.power_models import DayAheadHour
from compliance.power_plan import ALL_HOURS, ElectricityPlan, HourSet, PowerProfile, plan_from_settings
from compliance.schedule import SCHEDULE_IMPORT, ScheduleBook, import_day_ahead, kz_hour, load_day_ahead
from pool.db import Database
from registry_fixtures import ALICE_IIN, BOLAT_BIN, SettableClock, licence_line, licences_csv

from power_fixtures import import_registry, power_db, sqlite_power_db  # noqa: F401  (fixtures)

# 23:59:59 on 30 November in Kazakhstan is 18:59:59 UTC; one second later it is 1 December there.
KZ_LAST_SECOND_OF_NOVEMBER = datetime(2026, 11, 30, 18, 59, 59, tzinfo=UTC)
LICENCES = licences_csv(
    licence_line("alice", ALICE_IIN, "Alice Ivanova IE", "KZ-DM-0001", subtype="II", datacentre="dc-kz"),
    licence_line("bolat", BOLAT_BIN, "Bolat Energy LLP", "KZ-DM-0002", datacentre="dc-loop"))


def test_hours_parse_wrap_past_midnight_and_describe() -> None:
    night = HourSet.parse("22-7")
    assert [h for h in range(24) if night.allows(h)] == [0, 1, 2, 3, 4, 5, 6, 22, 23]
    assert night.describe() == "0-7,22-24"
    assert HourSet.parse("0-24") == ALL_HOURS and ALL_HOURS.describe() == "0-24"
    assert HourSet.parse("none").describe() == "none" and not HourSet.parse("none").allows(0)
    assert HourSet.parse("1,3, 5-6").describe() == "1-2,3-4,5-6"
    for bad in ("", "25", "7-30", "x-3"):
        with pytest.raises(ValueError):
            HourSet.parse(bad)


def test_kz_hour_crosses_midnight_and_the_month_five_hours_before_utc() -> None:
    assert kz_hour(KZ_LAST_SECOND_OF_NOVEMBER) == (date(2026, 11, 30), 23)
    assert kz_hour(datetime(2026, 11, 30, 19, 0, tzinfo=UTC)) == (date(2026, 12, 1), 0)
    assert kz_hour(datetime(2026, 12, 31, 19, 0, tzinfo=UTC)) == (date(2027, 1, 1), 0)


def test_plan_from_settings_and_precedence() -> None:
    plan = plan_from_settings({
        "default_hours": "0-24", "default_j_per_th": 25.0,
        "datacentres": [{"id": "dc-kz", "hours": "22-7", "quota_kwh": 1000,
                         "equipment": [{"model": "S19 Pro", "count": 3, "j_per_th": 29.5},
                                       {"model": "S21", "count": 1, "j_per_th": 17.5}]}],
        "miners": [{"login": "alice", "hours": "0-2"}]})
    assert plan.standing_hours("alice", "dc-kz")[1] == "login:alice"
    assert plan.standing_hours("bolat", "dc-kz") == (HourSet.parse("22-7"), "datacentre:dc-kz")
    assert plan.standing_hours("bolat", None)[1] == "default"
    assert plan.j_per_th("bolat", "dc-kz") == pytest.approx((3 * 29.5 + 17.5) / 4)
    assert plan.j_per_th("bolat", None) == 25.0
    with pytest.raises(ValueError, match=r"electricity.datacentres\[0\].hours"):
        plan_from_settings({"datacentres": [{"id": "x", "hours": "9-99"}]})
    with pytest.raises(ValueError, match="power_sources"):
        plan_from_settings({"miners": [{"login": "x", "power_sources": ["coal"]}]})


DAY_AHEAD = """date,datacentre,login,hour,allowed_kw
2026-12-01,dc-kz,,0,1500
2026-12-01,dc-kz,,1,1500
2026-12-01,,alice,5,20
"""


async def test_day_ahead_import_is_all_or_nothing_and_unlisted_hours_are_not_allotted(power_db: Database) -> None:
    bad = DAY_AHEAD + "2026-12-01,dc-kz,alice,2,10\n2026-12-01,dc-kz,,24,10\n2026-12-01,dc-kz,,0,5\n"
    report = await import_day_ahead(power_db, bad)
    assert not report.applied and [(p.row, p.column) for p in report.problems] == [
        (5, "datacentre"), (6, "hour"), (7, "hour")]
    async with power_db.engine.connect() as conn:
        assert await load_day_ahead(conn, date(2026, 12, 1), date(2026, 12, 1)) == {}
    assert (await import_day_ahead(power_db, DAY_AHEAD, dry_run=True)).applied is False
    report = await import_day_ahead(power_db, DAY_AHEAD)
    assert report.applied and (report.rows, report.groups) == (3, 2)
    async with power_db.engine.connect() as conn:
        days = await load_day_ahead(conn, date(2026, 11, 30), date(2026, 12, 2))
    assert days[date(2026, 12, 1)][("datacentre", "dc-kz")].describe() == "0-2"
    assert days[date(2026, 12, 1)][("login", "alice")].describe() == "5-6"
    # A corrected file for the same date and data centre replaces its hours.
    await import_day_ahead(power_db, "date,datacentre,login,hour,allowed_kw\n2026-12-01,dc-kz,,3,0\n")
    async with power_db.engine.connect() as conn:
        days = await load_day_ahead(conn, date(2026, 12, 1), date(2026, 12, 1))
    assert days[date(2026, 12, 1)][("datacentre", "dc-kz")].describe() == "none"


async def test_an_applied_import_is_one_audit_record(power_db: Database) -> None:
    records: list[tuple[str, dict]] = []

    def audit(kind: str, payload: dict) -> None:
        records.append((kind, payload))
    assert not (await import_day_ahead(power_db, DAY_AHEAD + "2026-12-01,,bolat,24,1\n", audit=audit)).applied
    assert not (await import_day_ahead(power_db, DAY_AHEAD, dry_run=True, audit=audit)).applied
    assert records == []                           # only applied imports are recorded

    two_days = DAY_AHEAD + "2026-12-02,dc-kz,,23,750.5\n"
    report = await import_day_ahead(power_db, two_days, audit=audit, operator="aigerim", source="kegoc-1201.csv")
    assert report.applied and len(records) == 1
    kind, payload = records[0]
    async with power_db.engine.connect() as conn:
        seqs = set((await conn.execute(select(DayAheadHour.import_seq))).scalars())
    assert kind == SCHEDULE_IMPORT == "day_ahead_schedule" and seqs == {report.import_seq}
    assert payload == {
        "action": "imported", "subject": f"import:{report.import_seq}", "import_seq": report.import_seq,
        "rows": 4, "dates": ["2026-12-01", "2026-12-02"],
        "scopes": ["datacentre:dc-kz", "login:alice"],
        "allotments": [{"date": "2026-12-01", "scope": "datacentre:dc-kz", "allotted_hours": 2, "kwh": "3000.000"},
                       {"date": "2026-12-01", "scope": "login:alice", "allotted_hours": 1, "kwh": "20.000"},
                       {"date": "2026-12-02", "scope": "datacentre:dc-kz", "allotted_hours": 1, "kwh": "750.500"}],
        "sha256": hashlib.sha256(two_days.encode()).hexdigest(), "bytes": len(two_days.encode()),
        "file": "kegoc-1201.csv", "operator": "aigerim"}
    # Recordable as is: the audit log's canonical JSON takes it (no floats).
    assert canonical_json(normalise_payload(payload))


def test_the_import_command_writes_a_signed_record(tmp_path: Path) -> None:
    """`kzpool energy import-schedule`: the record carries the SHA-256 of the file's bytes (a BOM
    included), the operator, and is covered by the pool's signature; a dry run records nothing."""
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.sqlite3"
    asyncio.run(_upgrade(url))
    common = ["--set", f'database.url="{url}"', "--set", f'audit.key_file="{tmp_path}/audit.pem"']
    raw = ("\ufeff" + DAY_AHEAD).encode("utf-8")
    schedule = tmp_path / "day-ahead-2026-12-01.csv"
    schedule.write_bytes(raw)
    assert energy_main(["energy", "import-schedule", str(schedule), "--dry-run", *common]) == 0
    assert asyncio.run(_records(url)) == []
    assert energy_main(["energy", "import-schedule", str(schedule), "--operator", "aigerim", *common]) == 0
    records = asyncio.run(_records(url))
    imports = [p for kind, p in records if kind == "day_ahead_schedule"]
    assert len(imports) == 1 and records[-1][0] == "checkpoint"          # signed before the command returned
    assert imports[0]["sha256"] == hashlib.sha256(raw).hexdigest() and imports[0]["bytes"] == len(raw)
    assert (imports[0]["operator"], imports[0]["file"], imports[0]["rows"]) == ("aigerim", schedule.name, 3)

    async def verify() -> bool:
        db = Database(url)
        try:
            return (await verify_database(db, [load_signing_key(tmp_path / "audit.pem").public],
                                          require_signed=True)).ok
        finally:
            await db.close()
    assert asyncio.run(verify())
    # Production without its audit key: refused before anything is imported.
    assert energy_main(["energy", "import-schedule", str(schedule), "--set", f'database.url="{url}"',
                        "--set", f'audit.key_file="{tmp_path}/none.pem"', "--set", "mode=production",
                        "--set", "auth.authorizer=allowlist", "--set", 'auth.logins=["x"]',
                        "--set", 'auth.allowed_networks=["10.0.0.0/8"]', "--set", 'accreditation.number="A-1"',
                        "--set", 'accreditation.issued="2026-01-01"', "--set", 'accreditation.expires="2029-01-01"',
                        "--set", 'accreditation.authority="MDDIAI"']) == 2
    assert len([k for k, _ in asyncio.run(_records(url)) if k == "day_ahead_schedule"]) == 1


async def _upgrade(url: str) -> None:
    db = Database(url)
    await db.upgrade()
    await db.close()


async def _records(url: str) -> list[tuple[str, dict]]:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(select(AuditRecord.kind, AuditRecord.payload).order_by(AuditRecord.seq))).all()
    finally:
        await db.close()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def test_day_ahead_beats_standing_hours_for_its_date_only() -> None:
    plan = ElectricityPlan(datacentres={"dc-kz": PowerProfile(hours=HourSet.parse("22-7"))})
    book = ScheduleBook(plan)
    book.set_day_ahead({date(2026, 12, 1): {("datacentre", "dc-kz"): HourSet.parse("0-2"),
                                            ("login", "alice"): HourSet.parse("5-6")}})

    def dec1_kz(hour: int) -> datetime:
        return datetime(2026, 11, 30, 19, tzinfo=UTC) + timedelta(hours=hour)
    assert book.allowed_at("bolat", "dc-kz", dec1_kz(1)) == (True, "day-ahead datacentre:dc-kz")
    assert book.allowed_at("bolat", "dc-kz", dec1_kz(3))[0] is False          # standing would allow 3
    assert book.allowed_at("alice", "dc-kz", dec1_kz(1))[0] is False           # her own day-ahead wins
    assert book.allowed_at("alice", "dc-kz", dec1_kz(5)) == (True, "day-ahead login:alice")
    assert book.allowed_at("bolat", "dc-kz", dec1_kz(-1)) == (True, "datacentre:dc-kz")   # 23:00 on 30 Nov
    # The day-ahead allotment covers all of 1 December: the next allotted hour is 00:00 on the 2nd.
    assert book.next_allowed("bolat", "dc-kz", dec1_kz(3)) == dec1_kz(24)


async def test_the_enforcer_acts_at_the_hour_across_midnight_and_the_month(sqlite_power_db: Database) -> None:
    db = sqlite_power_db
    await import_registry(db, LICENCES)
    clock = SettableClock(KZ_LAST_SECOND_OF_NOVEMBER)
    # dc-kz may mine from midnight to 07:00 Kazakhstan time; on 1 December its day-ahead allotment
    # is 00:00-02:00 only.
    plan = ElectricityPlan(datacentres={"dc-kz": PowerProfile(hours=HourSet.parse("0-7"))})
    await import_day_ahead(db, DAY_AHEAD.replace("2026-12-01,,alice,5,20\n", ""))
    calls: list[tuple[str, str, bool]] = []
    records: list[dict] = []
    enforcer = CurtailmentEnforcer(db, ScheduleBook(plan), on_block=lambda *a: calls.append(a),
                                   on_release=lambda login: calls.append((login, "released", False)),
                                   connected_logins=lambda: ["alice", "bolat"], grace_s=0, clock=clock,
                                   audit=lambda kind, payload: records.append(payload), node_id="node-a")
    await enforcer.poll_once()                                  # 23:59:59 on 30 Nov: hour 23 not allotted
    assert calls == [("alice", enforcer.blocked_reason("alice"), True)]
    assert enforcer.blocked_reason("alice").startswith(
        "outside_schedule: grid power is not allotted to datacentre:dc-kz in this hour until 2026-12-01 00:00 UTC+5")
    assert enforcer.work_allowed("bolat") and not enforcer.work_allowed("alice")
    assert [(r["action"], r["subject"], r["cause"]) for r in records] == [("block", "datacentre:dc-kz", "schedule")]

    calls.clear()
    clock.advance(seconds=1)                                    # 00:00:00 on 1 December (KZ)
    await enforcer.poll_once()
    assert calls == [("alice", "released", False)] and enforcer.work_allowed("alice")
    assert records[-1]["action"] == "release"

    clock.advance(hours=2)                                      # 02:00: the day-ahead allotment ended
    await enforcer.poll_once()
    assert "not allotted to day-ahead datacentre:dc-kz" in enforcer.blocked_reason("alice")
    assert enforcer.work_allowed("bolat")                      # dc-loop follows the default: all day
    clock.advance(hours=22)                                     # 00:00 on 2 December: standing hours again
    await enforcer.poll_once()
    assert enforcer.work_allowed("alice")
