"""The hourly grid-power volume rule: a day-ahead hour's allowed_kw x 1 h of energy, estimated from
stored shares by the EnergyAccountant, judged by the CurtailmentEnforcer with a fake clock. A login's
own allotment, a data centre's allotment shared by its logins, logins without day-ahead rows,
Kazakhstan hour boundaries, the reserve, audit records and refused authorizations."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from compliance.backoff import RefusalBackoff
from compliance.curtailment import CurtailmentEnforcer
from compliance.energy import kwh_for
from compliance.energy_accounting import EnergyAccountant
from compliance.energy_cli import main as energy_main
from compliance.energy_report import build_hourly_volumes, hourly_to_csv, hourly_to_json
from compliance.hourly_volume import HourUsage, judge_volumes
from compliance.power_plan import ElectricityPlan, HourSet, PowerProfile
from compliance.schedule import Allotment, ScheduleBook, import_day_ahead
from compliance.work_gate import GatedAuthorizer, WorkGate
from pool.db import Database
from pool.metrics import PoolCollector
from registry_fixtures import (ALICE_IIN, BOLAT_BIN, CASPIAN_BIN, DANA_IIN, SettableClock, licence_line,
                               licences_csv)
from stratum.interfaces import Account, Peer, Refusal

from power_fixtures import import_registry, insert_shares, migrated_sqlite, power_db, sqlite_power_db  # noqa: F401

NOON_KZ = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)            # 12:00-13:00 on 28 November in Kazakhstan
LICENCES = licences_csv(
    licence_line("alice", ALICE_IIN, "Alice Ivanova IE", "KZ-DM-0001", subtype="II", datacentre="dc-kz"),
    licence_line("bolat", BOLAT_BIN, "Bolat Energy LLP", "KZ-DM-0002", datacentre="dc-kz"),
    licence_line("caspian", CASPIAN_BIN, "Caspian Hash JSC", "KZ-DM-0003", datacentre="dc-loop"),
    licence_line("dana", DANA_IIN, "Dana Sultan IE", "KZ-DM-0004", datacentre="dc-kz"))
KWH_PER_DIFFICULTY = kwh_for(1.0, 30.0)          # the plan's default efficiency, 30 J/TH


def difficulty_for(kwh: float) -> float:
    return kwh / KWH_PER_DIFFICULTY


def schedule(*rows: tuple[str, str, str, int, float]) -> str:
    return "date,datacentre,login,hour,allowed_kw\n" + "".join(f"{d},{dc},{login},{h},{kw}\n"
                                                              for d, dc, login, h, kw in rows)


class Rig:
    """An accountant, an enforcer and what they told the miners, on one fake clock."""

    def __init__(self, db: Database, clock: SettableClock, connected: list[str], *, reserve_s: float = 0.0,
                 plan: ElectricityPlan | None = None) -> None:
        self.db, self.clock = db, clock
        plan = plan or ElectricityPlan()
        self.accountant = EnergyAccountant(db, plan, clock=clock)
        self.calls: list[tuple[str, str, bool]] = []
        self.released: list[str] = []
        self.records: list[dict] = []
        self.enforcer = CurtailmentEnforcer(
            db, ScheduleBook(plan), on_block=lambda *a: self.calls.append(a), on_release=self.released.append,
            connected_logins=lambda: connected, grace_s=0, clock=clock, node_id="node-a",
            audit=lambda kind, payload: self.records.append({"kind": kind, **payload}),
            quota=lambda: self.accountant.quota, hour_usage=lambda: self.accountant.hour_usage,
            volume_reserve_s=reserve_s)

    async def tick(self) -> None:
        """What the pool does: the accountant's update, then the enforcer's next poll."""
        await self.accountant.update()
        await self.enforcer.poll_once()

    def volume_records(self) -> list[tuple[str, str, str]]:
        return [(r["action"], r["subject"], r.get("hour", "")) for r in self.records if r["cause"] == "volume"]


async def mine(db: Database, worker: str, start: datetime, minutes: int, kwh_per_minute: float) -> None:
    """One share per minute worth `kwh_per_minute`, stored at hh:mm:30."""
    d = difficulty_for(kwh_per_minute)
    await insert_shares(db, worker, [(int((start + timedelta(minutes=m, seconds=30)).timestamp() * 1e6), d)
                                     for m in range(minutes)])


def test_the_allotment_follows_the_schedules_precedence_in_kazakhstan_hours() -> None:
    book = ScheduleBook(ElectricityPlan(datacentres={"dc-kz": PowerProfile(hours=HourSet.parse("0-7"))}))
    dc_kw, alice_kw = [0.0] * 24, [0.0] * 24
    dc_kw[0], dc_kw[1], alice_kw[5] = 1500.0, 1200.0, 20.0
    dec1 = date(2026, 12, 1)
    book.set_day_ahead_kw({dec1: {("datacentre", "dc-kz"): tuple(dc_kw), ("login", "alice"): tuple(alice_kw)}})
    midnight = datetime(2026, 11, 30, 19, tzinfo=UTC)                 # 00:00 on 1 December (KZ)
    assert book.allotment("bolat", "dc-kz", midnight) == Allotment("datacentre", "dc-kz", dec1, 0, 1500.0)
    assert book.allotment("bolat", "dc-kz", midnight + timedelta(minutes=59, seconds=59)).allowed_kw == 1500.0
    assert book.allotment("bolat", "dc-kz", midnight + timedelta(hours=1)).allowed_kw == 1200.0
    assert book.allotment("bolat", "dc-kz", midnight + timedelta(hours=2)).allowed_kw == 0.0   # not allotted
    assert book.allotment("alice", "dc-kz", midnight + timedelta(hours=5)).key == "login:alice"
    assert book.allotment("alice", "dc-kz", midnight).allowed_kw == 0.0         # her own rows decide all day
    assert book.allotment("bolat", "dc-kz", midnight - timedelta(seconds=1)) is None   # 30 Nov: standing hours
    assert book.allotment("caspian", "dc-loop", midnight) is None
    # Hours loaded without kW values (as the old loader gave) carry no volume.
    book.set_day_ahead({dec1: {("datacentre", "dc-kz"): HourSet.parse("0-2")}})
    assert book.allotment("bolat", "dc-kz", midnight) is None and book.allowed_at("bolat", "dc-kz", midnight)[0]

    # A data centre's volume adds up its logins' energy; a login with its own rows draws on its own;
    # an estimate of the previous hour counts as nothing used.
    book.set_day_ahead_kw({dec1: {("datacentre", "dc-kz"): tuple(dc_kw), ("login", "alice"): tuple(alice_kw)}})
    hour_s = int(midnight.timestamp())
    usage = HourUsage(hour_s, {"bolat": 900.0, "dana": 700.0, "alice": 5000.0, "caspian": 9e9}, midnight)
    dcs = {"alice": "dc-kz", "bolat": "dc-kz", "dana": "dc-kz", "caspian": "dc-loop"}
    state = judge_volumes(book, midnight + timedelta(minutes=30), usage, dcs)
    dc = state.scopes["datacentre:dc-kz"]
    assert (dc.used_kwh, dc.logins, dc.used_up, state.exhausted) == (1600.0, ("bolat", "dana"), True,
                                                                     ("datacentre:dc-kz",))
    assert "login:alice" not in state.scopes                          # her hour 0 is not allotted (0 kW)
    assert not judge_volumes(book, midnight + timedelta(hours=1), usage, dcs).exhausted
    assert judge_volumes(book, midnight, usage, dcs, reserve_s=360).scopes["datacentre:dc-kz"].threshold_kwh == 1350.0
    with pytest.raises(ValueError, match="volume_reserve_s"):
        judge_volumes(book, midnight, usage, dcs, reserve_s=3600)


async def test_a_login_is_stopped_when_its_hours_energy_reaches_the_allotment_and_released_next_hour(
        power_db: Database) -> None:
    db = power_db
    await import_registry(db, LICENCES)
    # 49.9 kW at 12:00 and 13:00, nothing at 14:00: alice draws 120 kW (2 kWh a minute), so her
    # 12:00 allotment of 49.9 kWh lasts 24.95 minutes.
    assert (await import_day_ahead(db, schedule(("2026-11-28", "", "alice", 12, 49.9),
                                                ("2026-11-28", "", "alice", 13, 49.9)))).applied
    clock = SettableClock(NOON_KZ)
    rig = Rig(db, clock, ["alice", "bolat"])
    await rig.tick()
    assert not rig.calls and rig.enforcer.work_allowed("alice")
    blocked_at = None
    for minute in range(30):
        await mine(db, "alice.rig1", NOON_KZ + timedelta(minutes=minute), 1, 2.0)
        clock.now = NOON_KZ + timedelta(minutes=minute + 1)            # the accountant runs once a minute
        await rig.tick()
        if rig.calls:
            blocked_at = minute + 1
            break
    # Blocked at the first update whose estimate reached the allotment: 25 shares, 50 kWh >= 49.9.
    assert blocked_at == 25
    assert rig.accountant.hour_usage.used_by_login["alice"] == pytest.approx(50.0)
    [(login, text, disconnect)] = rig.calls
    assert login == "alice" and disconnect is True
    assert text.startswith("hourly_volume_used_up: the grid power allotted to day-ahead login:alice for "
                           "12:00-13:00 UTC+5 on 2026-11-28 (49.9 kW x 1 h = 49.900 kWh) is used up: 50.000 kWh")
    assert text.endswith("until 2026-11-28 13:00 UTC+5")
    assert rig.enforcer.blocked_reason("alice") == text and rig.enforcer.work_allowed("bolat")
    [record] = [r for r in rig.records if r["cause"] == "volume"]
    assert record["kind"] == "curtailment"
    assert (record["action"], record["subject"], record["node"], record["hour"], record["allowed_kw"],
            record["allotted_kwh"], record["used_kwh"]) == ("block", "login:alice", "node-a", "2026-11-28 12:00 UTC+5",
                                                             "49.9", "49.900", "50.000")
    # A new authorization is refused with the reason while the hour lasts.
    inner_calls: list[str] = []

    class Inner:
        async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
            inner_calls.append(worker)
            return Account(worker.partition(".")[0], worker)
    auth = GatedAuthorizer(Inner(), WorkGate([rig.enforcer.blocked_reason]), backoff=RefusalBackoff(base_s=0, max_s=0))
    refused = await auth.authorize("alice.rig2", "x", Peer("127.0.0.1", 1))
    assert isinstance(refused, Refusal) and refused.reason == "hourly_volume_used_up" and not inner_calls
    assert isinstance(await auth.authorize("bolat.rig1", "x", Peer("127.0.0.1", 1)), Account)

    # Another worker process reads the writer's totals: the same estimate, as of the writer's update.
    reader = EnergyAccountant(db, ElectricityPlan(), clock=SettableClock(NOON_KZ + timedelta(minutes=26)),
                              writer=False)
    await reader.update()
    assert reader.hour_usage.used_by_login == pytest.approx({"alice": 50.0})
    assert reader.hour_usage.as_of == NOON_KZ + timedelta(minutes=25)

    # More updates within the hour: no second record, no second message.
    clock.advance(minutes=10)
    await rig.tick()
    assert len(rig.calls) == 1 and len(rig.volume_records()) == 1
    # 13:00: a new hour with an allotment not used yet. The enforcer wakes at the hour, before the
    # accountant's next update: the 12:00 estimate does not count against 13:00.
    clock.now = NOON_KZ + timedelta(hours=1)
    await rig.enforcer.poll_once()
    assert rig.released == ["alice"] and rig.enforcer.work_allowed("alice")
    assert rig.volume_records() == [("block", "login:alice", "2026-11-28 12:00 UTC+5"),
                                    ("release", "login:alice", "2026-11-28 12:00 UTC+5")]
    assert isinstance(await auth.authorize("alice.rig2", "x", Peer("127.0.0.1", 1)), Account)
    # She uses the 13:00 allotment up too: a second block record, for that hour.
    await mine(db, "alice.rig1", clock.now, 25, 2.0)
    clock.advance(minutes=25)
    await rig.tick()
    assert rig.enforcer.blocked_reason("alice").startswith("hourly_volume_used_up: ") and len(rig.calls) == 2
    assert rig.volume_records()[-1] == ("block", "login:alice", "2026-11-28 13:00 UTC+5")
    # 14:00 is not allotted: still no work, now because of the schedule.
    clock.now = NOON_KZ + timedelta(hours=2)
    await rig.tick()
    assert rig.enforcer.blocked_reason("alice").startswith("outside_schedule: grid power is not allotted to "
                                                           "day-ahead login:alice")
    assert rig.released == ["alice"] and rig.volume_records()[-1][0] == "release"


async def test_a_datacentre_allotment_is_shared_by_its_logins(power_db: Database) -> None:
    db = power_db
    await import_registry(db, LICENCES)
    # dc-kz is allotted 99.9 kW at 12:00 and 13:00; dana (in dc-kz) has an allotment of her own; caspian
    # (dc-loop) has no day-ahead rows at all.
    assert (await import_day_ahead(db, schedule(("2026-11-28", "dc-kz", "", 12, 99.9),
                                                ("2026-11-28", "dc-kz", "", 13, 99.9),
                                                ("2026-11-28", "", "dana", 12, 1000)))).applied
    clock = SettableClock(NOON_KZ)
    rig = Rig(db, clock, ["alice", "bolat", "caspian", "dana"])
    # 40 minutes of alice and bolat at 60 kW each (1 kWh a minute): 80 kWh together, each alone
    # 40 kWh; dana and caspian mine far more than 99.9 kWh.
    for worker in ("alice.rig1", "bolat.rig1"):
        await mine(db, worker, NOON_KZ, 40, 1.0)
    await mine(db, "dana.rig1", NOON_KZ, 40, 10.0)
    await mine(db, "caspian.rig1", NOON_KZ, 40, 50.0)
    clock.advance(minutes=40)
    await rig.tick()
    assert not rig.calls
    volume = rig.enforcer.volume.scopes["datacentre:dc-kz"]
    assert volume.used_kwh == pytest.approx(80.0) and volume.logins == ("alice", "bolat")
    # Ten more minutes: 100 kWh together >= 99.9. Both stop, the others mine on.
    for worker in ("alice.rig1", "bolat.rig1"):
        await mine(db, worker, NOON_KZ + timedelta(minutes=40), 10, 1.0)
    clock.advance(minutes=10)
    await rig.tick()
    assert sorted(c[0] for c in rig.calls) == ["alice", "bolat"]
    assert rig.enforcer.blocked_reason("bolat").startswith(
        "hourly_volume_used_up: the grid power allotted to day-ahead datacentre:dc-kz for 12:00-13:00 UTC+5")
    assert rig.enforcer.work_allowed("dana") and rig.enforcer.work_allowed("caspian")
    assert rig.volume_records() == [("block", "datacentre:dc-kz", "2026-11-28 12:00 UTC+5")]
    assert [r["logins"] for r in rig.records if r["cause"] == "volume"] == [2]
    # The metrics: per data centre only (dana's own allotment is counted, not labelled).
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
               for m in PoolCollector._hourly_volume(SimpleNamespace(curtailment=rig.enforcer, energy=rig.accountant))
               for x in m.samples}
    assert samples[("kzpool_hour_energy_kwh", (("datacentre", "dc-kz"), ("kind", "allotted")))] == 99.9
    assert samples[("kzpool_hour_energy_kwh", (("datacentre", "dc-kz"), ("kind", "used")))] == pytest.approx(100.0)
    assert samples[("kzpool_hourly_volumes_used_up", (("scope", "datacentre"),))] == 1
    assert samples[("kzpool_hourly_volumes_used_up", (("scope", "login"),))] == 0
    assert samples[("kzpool_energy_estimate_age_seconds", ())] == 0.0
    assert not any(dict(labels).get("datacentre") == "dana" or "login" in dict(labels) for _, labels in samples)
    # 13:00: the data centre's next allotment; dana's own rows do not list 13:00 (0 kW).
    clock.now = NOON_KZ + timedelta(hours=1)
    await rig.tick()
    assert sorted(rig.released) == ["alice", "bolat"]
    assert rig.enforcer.work_allowed("alice") and rig.volume_records()[-1][0] == "release"
    assert rig.enforcer.blocked_reason("dana").startswith("outside_schedule: ")
    assert rig.enforcer.work_allowed("caspian")


async def test_a_login_without_schedule_rows_mines_as_before(sqlite_power_db: Database) -> None:
    db = sqlite_power_db
    await import_registry(db, LICENCES)
    assert (await import_day_ahead(db, schedule(("2026-11-28", "", "alice", 12, 1)))).applied
    clock = SettableClock(NOON_KZ)
    rig = Rig(db, clock, ["bolat", "caspian"])
    await mine(db, "bolat.rig1", NOON_KZ, 30, 1e6)             # a gigawatt-hour an hour, no volume to judge
    clock.advance(minutes=30)
    await rig.tick()
    assert not rig.calls and not rig.records and rig.enforcer.work_allowed("bolat")
    assert list(rig.enforcer.volume.scopes) == ["login:alice"]


async def test_the_volume_is_counted_per_kazakhstan_hour_across_midnight(sqlite_power_db: Database) -> None:
    db = sqlite_power_db
    await import_registry(db, LICENCES)
    # 1 December (KZ) starts at 19:00 UTC on 30 November. dc-kz: 30 kW at 00:00 and 01:00.
    midnight = datetime(2026, 11, 30, 19, tzinfo=UTC)
    assert (await import_day_ahead(db, schedule(("2026-12-01", "dc-kz", "", 0, 30),
                                                ("2026-12-01", "dc-kz", "", 1, 30)))).applied
    clock = SettableClock(midnight - timedelta(minutes=30))
    rig = Rig(db, clock, ["alice"], reserve_s=360)
    # 23:30-23:59 on 30 November (standing hours, no volume): 29 kWh a minute, far beyond 30 kWh.
    await mine(db, "alice.rig1", midnight - timedelta(minutes=30), 30, 29.0)
    clock.now = midnight - timedelta(seconds=1)
    await rig.tick()
    assert not rig.calls
    clock.now = midnight
    await rig.tick()
    assert not rig.calls                                        # 23:xx energy is not 00:00's
    # From 00:00 she draws 300 kW, 5 kWh a minute; with 360 s held back work stops at 27 kWh,
    # after 6 minutes (30 kWh would be after 6 too, 25 kWh after 5 is not yet).
    await mine(db, "alice.rig1", midnight, 5, 5.0)
    clock.now = midnight + timedelta(minutes=5)
    await rig.tick()
    assert not rig.calls
    await mine(db, "alice.rig1", midnight + timedelta(minutes=5), 1, 5.0)
    clock.now = midnight + timedelta(minutes=6)
    await rig.tick()
    [(_, text, _)] = rig.calls
    assert "datacentre:dc-kz for 00:00-01:00 UTC+5 on 2026-12-01" in text
    assert "work stops at 27.000 kWh (360 s held back)" in text and text.endswith("until 2026-12-01 01:00 UTC+5")
    assert [r["threshold_kwh"] for r in rig.records if r["cause"] == "volume"] == ["27.000"]
    clock.now = midnight + timedelta(hours=1)                   # 01:00 (KZ): released
    await rig.enforcer.poll_once()
    assert rig.released == ["alice"]


async def test_the_by_hour_report_shows_each_allotment_against_the_energy_used(power_db: Database) -> None:
    db = power_db
    await import_registry(db, LICENCES)
    assert (await import_day_ahead(db, schedule(("2026-11-28", "dc-kz", "", 12, 99.9),
                                                ("2026-11-28", "dc-kz", "", 13, 40),
                                                ("2026-11-28", "", "dana", 12, 5)))).applied
    await mine(db, "alice.rig1", NOON_KZ, 50, 1.0)              # 12:00: 50 + 50 kWh against 99.9
    await mine(db, "bolat.rig1", NOON_KZ, 50, 1.0)
    await mine(db, "alice.rig1", NOON_KZ + timedelta(hours=1), 30, 1.0)      # 13:00: 30 of 40
    await mine(db, "bolat.rig1", NOON_KZ + timedelta(hours=2), 3, 1.0)       # 14:00: 0 kW allotted
    await mine(db, "caspian.rig1", NOON_KZ, 60, 9.0)            # no day-ahead rows: not in this check
    volumes = await build_hourly_volumes(db, ElectricityPlan(), 2026, 11)
    assert [(v.hour, v.allotment, v.allowed_kw, round(v.used_kwh, 6), round(v.over_kwh, 6), v.logins)
            for v in volumes] == [
        (12, "datacentre:dc-kz", 99.9, 100.0, 0.1, ("alice", "bolat")),
        (12, "login:dana", 5.0, 0.0, 0.0, ("dana",)),
        (13, "datacentre:dc-kz", 40.0, 30.0, 0.0, ("alice", "bolat")),
        (14, "datacentre:dc-kz", 0.0, 3.0, 3.0, ("alice", "bolat"))]
    rows = hourly_to_csv(volumes).splitlines()
    assert rows[0] == "date,hour,allotment,allowed_kw,allotted_kwh,used_kwh,over_kwh,logins"
    assert rows[1] == "2026-11-28,12,datacentre:dc-kz,99.9,99.900,100.000,0.100,alice bolat"
    data = json.loads(hourly_to_json(volumes, "2026-11"))
    assert data["totals"]["hours_over"] == 2 and data["totals"]["over_kwh"] == pytest.approx(3.1)
    assert data["hours"][0]["logins"] == ["alice", "bolat"] and data["timezone"] == "UTC+05:00"


def test_energy_report_by_hour_cli(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    async def prepare() -> str:
        url = await migrated_sqlite(tmp_path, tmp_path_factory.getbasetemp())
        db = Database(url)
        await import_registry(db, LICENCES)
        await import_day_ahead(db, schedule(("2026-11-28", "", "alice", 12, 10)))
        await mine(db, "alice.rig1", NOON_KZ, 12, 1.0)
        await db.close()
        return url
    url = asyncio.run(prepare())
    assert energy_main(["energy", "report", "--month", "2026-11", "--by-hour", "--set", f'database.url="{url}"']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["date,hour,allotment,allowed_kw,allotted_kwh,used_kwh,over_kwh,logins",
                   "2026-11-28,12,login:alice,10,10.000,12.000,2.000,alice"]
