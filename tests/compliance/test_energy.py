"""Energy from accepted work: a simulated miner of known hashrate and efficiency, compaction,
quotas across a Kazakhstan month boundary, minutes mined outside the schedule, the fee table and
the monthly report (CSV, JSON, CLI)."""
from __future__ import annotations

import asyncio
import json
import random
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from compliance.curtailment import CurtailmentEnforcer
from compliance.energy import (DEFAULT_FEE_RATES, fee_rate, fee_rates_from_settings, kwh_for, kz_month_bounds,
                               parse_month)
from compliance.energy_accounting import EnergyAccountant
from compliance.energy_cli import main as energy_main
from compliance.energy_report import build_report, to_csv, to_json
from compliance.power_plan import ElectricityPlan, Equipment, FeeBasis, HourSet, PowerProfile
from compliance.schedule import ScheduleBook
from pool.compaction import compact
from pool.db import Database
from registry_fixtures import ALICE_IIN, BOLAT_BIN, SettableClock, licence_line, licences_csv

from power_fixtures import import_registry, insert_shares, power_db, sqlite_power_db  # noqa: F401  (fixtures)

HOUR_START = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)          # 11:00-12:00 in Kazakhstan
LICENCES = licences_csv(
    licence_line("alice", ALICE_IIN, "Alice Ivanova IE", "KZ-DM-0001", subtype="II", datacentre="dc-kz"),
    licence_line("bolat", BOLAT_BIN, "Bolat Energy LLP", "KZ-DM-0002", datacentre="dc-kz"))


def test_one_difficulty_1_share_is_2_to_the_32_hashes() -> None:
    # 2**32 hashes at 30 J/TH: 128.8 J, 3.58e-5 kWh.
    assert kwh_for(1.0, 30.0) == pytest.approx(2 ** 32 / 1e12 * 30 / 3.6e6)
    assert kz_month_bounds(2026, 12) == (datetime(2026, 11, 30, 19, tzinfo=UTC), datetime(2026, 12, 31, 19, tzinfo=UTC))
    with pytest.raises(ValueError):
        parse_month("2026-13")


def simulated_miner(hashrate_ths: float, start: datetime, seconds: float, seed: int) -> list[tuple[int, float]]:
    """Shares of a miner hashing at `hashrate_ths`: a Poisson process whose rate at difficulty d is
    hashrate / (d * 2**32); vardiff raises the difficulty after ten minutes."""
    rng = random.Random(seed)
    shares, t = [], 0.0
    while True:
        difficulty = 2.0 ** 12 if t < 600 else 2.0 ** 14
        t += rng.expovariate(hashrate_ths * 1e12 / (difficulty * 2 ** 32))
        if t >= seconds:
            return shares
        shares.append((int((start.timestamp() + t) * 1_000_000), difficulty))


async def test_a_simulated_miner_is_estimated_within_5_percent_over_an_hour(power_db: Database) -> None:
    hashrate_ths, j_per_th = 110.0, 21.5          # an S19 XP's figures: 2.365 kW
    plan = ElectricityPlan(miners={"alice": PowerProfile(equipment=(Equipment("S19 XP", 1, j_per_th),))})
    shares = simulated_miner(hashrate_ths, HOUR_START, 3600, seed=20261120)
    await insert_shares(power_db, "alice.rig1", shares)
    truth_kwh = hashrate_ths * j_per_th * 3600 / 3.6e6
    [hour] = await EnergyAccountant(power_db, plan).compute(HOUR_START, HOUR_START + timedelta(hours=1))
    error = hour.kwh / truth_kwh - 1
    print(f"\nsimulated miner: {len(shares)} shares, estimate {hour.kwh:.4f} kWh, truth {truth_kwh:.4f} kWh, "
          f"error {error:+.2%}", file=sys.stderr)
    assert abs(error) < 0.05
    assert (hour.login, hour.hour_s, hour.shares, hour.outside_minutes) == (
        "alice", int(HOUR_START.timestamp()), len(shares), 0)
    # Compaction moves the shares into per-minute totals: the estimate does not change.
    assert await compact(power_db, HOUR_START + timedelta(hours=2)) == len(shares)
    [again] = await EnergyAccountant(power_db, plan).compute(HOUR_START, HOUR_START + timedelta(hours=1))
    assert again.kwh == pytest.approx(hour.kwh) and again.shares == hour.shares


async def test_quota_is_judged_per_kz_month_and_released_when_the_month_turns(sqlite_power_db: Database) -> None:
    db = sqlite_power_db
    await import_registry(db, LICENCES)
    # 23:30 on 30 November and 00:30 on 1 December in Kazakhstan.
    november, december = datetime(2026, 11, 30, 18, 30, tzinfo=UTC), datetime(2026, 11, 30, 19, 30, tzinfo=UTC)
    big = 1e3 / kwh_for(1.0, 30.0)                 # one share worth 1000 kWh at 30 J/TH
    await insert_shares(db, "alice.rig1", [(int(november.timestamp() * 1e6), big)])
    await insert_shares(db, "bolat.rig1", [(int(december.timestamp() * 1e6), big / 1000)])
    plan = ElectricityPlan(miners={"alice": PowerProfile(quota_kwh=500)},
                           datacentres={"dc-kz": PowerProfile(quota_kwh=1200)})
    clock = SettableClock(datetime(2026, 11, 30, 18, 45, tzinfo=UTC))      # 23:45 on 30 November (KZ)
    accountant = EnergyAccountant(db, plan, clock=clock)
    blocked: list[tuple[str, str, bool]] = []
    enforcer = CurtailmentEnforcer(db, ScheduleBook(plan), on_block=lambda *a: blocked.append(a),
                                   connected_logins=lambda: ["alice", "bolat"], grace_s=0, clock=clock,
                                   quota=lambda: accountant.quota)
    reader = EnergyAccountant(db, plan, clock=clock, writer=False)      # another worker process
    assert not (await reader.update()).exhausted                         # nothing stored yet
    state = await accountant.update()
    assert state.month == (2026, 11) and state.used_by_login["alice"] == pytest.approx(1000)
    assert set(state.exhausted) == {"login:alice"}              # dc-kz: 1000 of 1200 kWh
    assert (await reader.update()).exhausted == state.exhausted
    await enforcer.poll_once()
    assert [b[0] for b in blocked] == ["alice"] and enforcer.blocked_reason("alice").startswith(
        "quota_used_up: the 2026-11 energy quota of login alice (500 kWh) is used up (1000.0 kWh)")
    assert enforcer.work_allowed("bolat")

    clock.now = datetime(2026, 11, 30, 19, 45, tzinfo=UTC)                # 00:45 on 1 December (KZ)
    state = await accountant.update()
    assert state.month == (2026, 12) and "alice" not in state.used_by_login
    assert state.used_by_login["bolat"] == pytest.approx(1.0) and not state.exhausted
    await enforcer.poll_once()
    assert enforcer.work_allowed("alice")
    # The November hour was stored once and is not counted again (idempotent recompute).
    assert (await accountant.month_usage(2026, 11))["alice"] == pytest.approx(1000)
    await accountant.update()
    assert (await accountant.month_usage(2026, 11))["alice"] == pytest.approx(1000)


def test_fee_rates_by_period_price_band_and_source() -> None:
    grid = FeeBasis(("grid",), 15.0, True)
    assert fee_rate(DEFAULT_FEE_RATES, date(2022, 6, 1), grid).tenge_per_kwh == 1
    assert fee_rate(DEFAULT_FEE_RATES, date(2023, 6, 1), grid).tenge_per_kwh == 10
    assert fee_rate(DEFAULT_FEE_RATES, date(2023, 6, 1), FeeBasis(("grid",), 24.0, True)).tenge_per_kwh == 1
    assert fee_rate(DEFAULT_FEE_RATES, date(2023, 6, 1), FeeBasis(("grid",), None, True)).tenge_per_kwh == 25
    assert fee_rate(DEFAULT_FEE_RATES, date(2023, 6, 1), FeeBasis(("grid",), 30.0, False)).tenge_per_kwh == 25
    assert fee_rate(DEFAULT_FEE_RATES, date(2023, 6, 1), FeeBasis(("own_generation",), None, True)).tenge_per_kwh == 10
    assert fee_rate(DEFAULT_FEE_RATES, date(2024, 1, 1), grid).tenge_per_kwh == 2
    assert fee_rate(DEFAULT_FEE_RATES, date(2026, 11, 1), FeeBasis(("renewable",), None, True)).tenge_per_kwh == 1
    assert fee_rate(DEFAULT_FEE_RATES, date(2021, 12, 31), grid) is None
    custom = fee_rates_from_settings([{"from": "2026-01-01", "until": "", "source": "grid", "tenge_per_kwh": 3}])
    assert fee_rate(custom, date(2026, 11, 1), grid).tenge_per_kwh == 3
    with pytest.raises(ValueError, match=r"energy.fee_rates\[0\].source"):
        fee_rates_from_settings([{"from": "2026-01-01", "source": "coal", "tenge_per_kwh": 3}])


async def test_the_monthly_report_counts_minutes_outside_the_schedule(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db, LICENCES)
    # dc-kz may mine 00:00-07:00 (KZ); alice mined at 07:00:30 and 07:01:10 on 5 November, which is
    # two minutes outside, and at 06:30 inside. Bolat is licensed but mined nothing.
    seven = datetime(2026, 11, 5, 2, 0, tzinfo=UTC)
    at = lambda delta: int((seven + delta).timestamp() * 1_000_000)      # noqa: E731
    await insert_shares(power_db, "alice.rig1", [(at(timedelta(seconds=30)), 1e6), (at(timedelta(seconds=70)), 1e6),
                                                 (at(timedelta(minutes=-30)), 2e6)])
    plan = ElectricityPlan(datacentres={"dc-kz": PowerProfile(hours=HourSet.parse("0-7"), quota_kwh=900,
                                                              power_sources=("grid",), avg_price_tenge=15.0)},
                           miners={"alice": PowerProfile(quota_kwh=100)})
    report = await build_report(power_db, plan, DEFAULT_FEE_RATES, 2026, 11)
    alice, bolat = report.miners
    assert (alice.login, bolat.login, bolat.kwh) == ("alice", "bolat", 0.0)
    assert alice.kwh == pytest.approx(kwh_for(4e6, 30.0)) and alice.shares == 3
    assert alice.outside_schedule_h == pytest.approx(2 / 60)
    assert alice.fee_tenge == pytest.approx(alice.kwh * 2) and alice.rates == {2}
    rows = to_csv(report).splitlines()
    assert rows[0].startswith("login,datacentre,shares,j_per_th,kwh,quota_kwh,datacentre_quota_kwh,outside_schedule_h")
    assert rows[1].startswith("alice,dc-kz,3,30.00,") and ",100.000,900.000,0.03,2," in rows[1]
    data = json.loads(to_json(report))
    assert data["month"] == "2026-11" and data["timezone"] == "UTC+05:00"
    assert data["datacentres"] == [{"id": "dc-kz", "kwh": pytest.approx(alice.kwh), "quota_kwh": 900.0}]
    assert data["totals"]["outside_schedule_h"] == pytest.approx(2 / 60)


def test_energy_report_cli(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.sqlite3"

    async def prepare() -> None:
        db = Database(url)
        await db.upgrade()
        await insert_shares(db, "demo.rig1", [(int(HOUR_START.timestamp() * 1e6), 1e6)])
        await db.close()
    asyncio.run(prepare())
    db_set = ["--set", f'database.url="{url}"']
    out = tmp_path / "report.json"
    assert energy_main(["energy", "report", "--month", "2026-11", "--format", "json", "--output", str(out),
                        *db_set]) == 0
    data = json.loads(out.read_text())
    assert [m["login"] for m in data["miners"]] == ["demo"] and data["miners"][0]["kwh"] > 0
    schedule = tmp_path / "day-ahead.csv"
    schedule.write_text("date,datacentre,login,hour,allowed_kw\n2026-12-01,,demo,0,5\n")
    assert energy_main(["energy", "import-schedule", str(schedule), *db_set]) == 0
    schedule.write_text("date,datacentre,login,hour,allowed_kw\n2026-12-01,,demo,24,5\n")
    assert energy_main(["energy", "import-schedule", str(schedule), *db_set]) == 1
    with pytest.raises(SystemExit):
        energy_main(["energy", "report", "--month", "November"])
