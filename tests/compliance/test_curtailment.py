"""Curtailment orders and the enforcer: validation, scope (data centre or login), the grace period,
release on cancel or end, audit records, and the `kzpool curtail` command."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compliance.curtail_cli import main as curtail_main
from compliance.curtail_cli import parse_when
from compliance.curtailment import CurtailmentEnforcer
from compliance.curtailment_orders import OrderError, cancel_order, create_order, list_orders
from compliance.power_plan import ElectricityPlan
from compliance.schedule import ScheduleBook
from pool.db import Database
from registry_fixtures import ALICE_IIN, BOLAT_BIN, CASPIAN_BIN, SettableClock, licence_line, licences_csv

from power_fixtures import import_registry, migrated_sqlite, power_db, sqlite_power_db  # noqa: F401  (fixtures)

NOW = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)       # 12:00 in Kazakhstan
LICENCES = licences_csv(
    licence_line("alice", ALICE_IIN, "Alice Ivanova IE", "KZ-DM-0001", subtype="II", datacentre="dc-kz"),
    licence_line("bolat", BOLAT_BIN, "Bolat Energy LLP", "KZ-DM-0002", datacentre="dc-kz"),
    licence_line("caspian", CASPIAN_BIN, "Caspian Hash JSC", "KZ-DM-0003", datacentre="dc-loop"))


def test_times_are_kazakhstan_time_unless_an_offset_is_given() -> None:
    assert parse_when("now", NOW) == NOW
    assert parse_when("+90m", NOW) == NOW + timedelta(minutes=90)
    assert parse_when("+1d", NOW) == NOW + timedelta(days=1)
    assert parse_when("2026-12-01T22:00", NOW) == datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    assert parse_when("2026-12-01T22:00Z", NOW) == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    with pytest.raises(Exception, match="expected now"):
        parse_when("tomorrow", NOW)


async def test_orders_are_checked_listed_and_cancelled(power_db: Database) -> None:
    await import_registry(power_db, LICENCES)
    hour = timedelta(hours=1)
    for scope, target, start, end, reason, message in [
        ("datacentre", "dc-nowhere", NOW, NOW + hour, "x", "not in the registry"),
        ("login", "alice", NOW, NOW - hour, "x", "is not after"),
        ("login", "alice", NOW - 2 * hour, NOW - hour, "x", "already past"),
        ("login", "alice", NOW, NOW + hour, " ", "--reason"),
        ("rack", "r1", NOW, NOW + hour, "x", "scope"),
    ]:
        with pytest.raises(OrderError, match=message):
            await create_order(power_db, scope, target, start, end, reason, "op", NOW)
    first = await create_order(power_db, "datacentre", "dc-kz", NOW, NOW + hour, "KEGOC order 7", "op", NOW)
    later = await create_order(power_db, "login", "alice", NOW + 2 * hour, NOW + 3 * hour, "maintenance", "op", NOW)
    assert first.describe() == ("order 1 stops grid-powered mining for datacentre dc-kz until 2026-11-28 13:00 UTC+5: "
                                "KEGOC order 7")
    assert [(o.id, o.status(NOW)) for o in await list_orders(power_db, NOW)] == [(1, "in_force"), (2, "scheduled")]
    cancelled = await cancel_order(power_db, later.id, "not needed", NOW)
    assert cancelled.status(NOW) == "cancelled" and cancelled.cancel_reason == "not needed"
    with pytest.raises(OrderError, match="cancelled already"):
        await cancel_order(power_db, later.id, "again", NOW)
    with pytest.raises(OrderError, match="no curtailment order 99"):
        await cancel_order(power_db, 99, "x", NOW)
    assert [o.id for o in await list_orders(power_db, NOW)] == [1]
    assert [o.id for o in await list_orders(power_db, NOW + 2 * hour, include_past=True)] == [1, 2]


async def test_an_order_blocks_its_scope_tells_then_disconnects_and_releases(sqlite_power_db: Database) -> None:
    db = sqlite_power_db
    await import_registry(db, LICENCES)
    clock = SettableClock(NOW)
    calls: list[tuple[str, bool]] = []
    released: list[str] = []
    records: list[dict] = []
    enforcer = CurtailmentEnforcer(db, ScheduleBook(ElectricityPlan()), on_block=lambda l, t, d: calls.append((l, d)),
                                   on_release=released.append, connected_logins=lambda: ["alice", "caspian"],
                                   grace_s=0.3, clock=clock, audit=lambda k, p: records.append(p), node_id="n1")
    await enforcer.poll_once()
    assert enforcer.work_allowed("alice") and not calls and not records
    order = await create_order(db, "datacentre", "dc-kz", NOW, NOW + timedelta(hours=1), "KEGOC order 7", "op", NOW)
    await enforcer.poll_once()
    # alice (connected) is told at once; bolat (not connected, same data centre) may not authorize.
    assert calls == [("alice", False)]
    assert not enforcer.work_allowed("bolat") and enforcer.work_allowed("caspian")
    assert enforcer.blocked_reason("bolat").startswith("curtailed: order 1 stops grid-powered mining for datacentre dc-kz")
    assert [(r["action"], r["subject"], r["cause"], r["order"], r["node"]) for r in records] == [
        ("block", "datacentre:dc-kz", "order", order.id, "n1")]
    await asyncio.sleep(0.45)
    assert calls == [("alice", False), ("alice", True)]          # disconnected after the grace period

    await cancel_order(db, order.id, "grid restored", NOW)
    await enforcer.poll_once()
    assert released == ["alice"] and enforcer.work_allowed("alice") and enforcer.work_allowed("bolat")
    assert records[-1]["action"] == "release" and records[-1]["reason"] == "KEGOC order 7"

    # A login order that ends by itself: released at its end, and cancelling inside the grace
    # period means no disconnect.
    calls.clear()
    await create_order(db, "login", "caspian", NOW, NOW + timedelta(minutes=10), "test", "op", NOW)
    await enforcer.poll_once()
    assert calls == [("caspian", False)]
    clock.advance(minutes=10)
    await enforcer.poll_once()
    await asyncio.sleep(0.4)
    assert calls == [("caspian", False)] and released == ["alice", "caspian"]


def test_poll_interval_must_keep_the_5_second_promise() -> None:
    with pytest.raises(ValueError, match="poll_s"):
        CurtailmentEnforcer(Database("sqlite+aiosqlite:///:memory:"), ScheduleBook(ElectricityPlan()),
                            on_block=lambda *a: None, poll_s=3.0)


def test_curtail_cli_orders_lists_and_cancels(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    async def prepare() -> str:
        url = await migrated_sqlite(tmp_path, tmp_path_factory.getbasetemp())
        db = Database(url)
        await import_registry(db, LICENCES)
        await db.close()
        return url
    url = asyncio.run(prepare())
    db_set = ["--set", f'database.url="{url}"']
    assert curtail_main(["curtail", "--datacentre", "dc-kz", "--from", "now", "--until", "+2h",
                         "--reason", "KEGOC order 7", *db_set]) == 0
    assert capsys.readouterr().out.startswith("order 1: datacentre dc-kz curtailed from ")
    assert curtail_main(["curtail", "--login", "alice", "--from", "now", "--until", "now", "--reason", "x",
                         *db_set]) == 1
    assert "is not after" in capsys.readouterr().err
    assert curtail_main(["curtail", "--login", "alice", "--datacentre", "dc-kz", "--from", "now", "--until", "+1h",
                         "--reason", "x", *db_set]) == 1
    assert curtail_main(["curtail", "list", *db_set]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id\tstatus") and lines[1].startswith("1\tin_force\tdatacentre\tdc-kz\t")
    assert lines[1].endswith("KEGOC order 7")
    assert curtail_main(["curtail", "cancel", "1", "--reason", "grid restored", *db_set]) == 0
    assert capsys.readouterr().out.startswith("order 1: cancelled (grid restored)")
    assert curtail_main(["curtail", "list", *db_set]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert curtail_main(["curtail", "list", "--all", *db_set]) == 0
    assert "\tcancelled " in capsys.readouterr().out
