"""The hourly volume rule through the composition root, over TCP: a default-wired pool (PoolApp with
OperatingRules: the EnergyAccountant feeding the CurtailmentEnforcer), a day-ahead allotment for the
demo login worth a few shares, a miner whose stored shares reach it. It is told with
client.show_message, its later shares are refused, it is disconnected after the grace period and
cannot authorize again this hour; the audit log holds the block, the metrics show it. The time from
the share that reached the allotment to the message is measured against update_s + poll_s."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from compliance.energy import kwh_for
from compliance.schedule import import_day_ahead
from compliance.standing import kz_today, utc_now
from pool.app import PoolApp
from pool.config import load_config
from pool.db import Database
from pool.simnet import SimulatedChain
from pool_overrides import test_overrides
from stratum_client import StratumTestClient

UPDATE_S, POLL_S, GRACE_S = 0.5, 1.0, 1.0
SHARES_ALLOTTED = 4.5            # the allotment is worth 4.5 shares at the start difficulty


def show_messages(client: StratumTestClient) -> list[str]:
    return [n["params"][0] for n in client.notifications if n["method"] == "client.show_message"]


async def test_a_miner_stops_when_its_hours_allotment_is_used_and_is_told_why(tmp_path: Path) -> None:
    # Not across an hour boundary: a new hour's allotment would let the miner back in mid-test.
    to_hour = 3600 - utc_now().timestamp() % 3600
    if to_hour < 20:
        await asyncio.sleep(to_hour + 0.5)
    url = f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3"
    cfg = load_config(overrides=test_overrides(**{
        "database.url": f'"{url}"', "energy.update_s": str(UPDATE_S), "curtailment.poll_s": str(POLL_S),
        "curtailment.grace_s": str(GRACE_S)}))
    difficulty = cfg.stratum.start_difficulty
    allowed_kw = SHARES_ALLOTTED * kwh_for(difficulty, cfg.electricity.default_j_per_th)   # x 1 h, in kWh
    app = PoolApp(cfg, source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    db = Database(url)
    try:
        today = kz_today(utc_now())
        rows = "".join(f"{day.isoformat()},,demo,{hour},{allowed_kw!r}\n"
                       for day in (today, today + timedelta(days=1)) for hour in range(24))
        assert (await import_day_ahead(db, "date,datacentre,login,hour,allowed_kw\n" + rows)).applied
        await asyncio.sleep(POLL_S + 0.2)                 # the enforcer has the schedule

        miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await miner.handshake()
        for n in range(5):                                # 5 shares: 5 >= 4.5 shares' worth
            share = miner.mine_share(extranonce2=n)
            assert (await miner.request("mining.submit", share))["result"] is True, n
            assert not show_messages(miner)
        stored = time.monotonic()                         # the 5th share is durable: its reply came
        await miner.wait_for(lambda: bool(show_messages(miner)), timeout=UPDATE_S + POLL_S + 3)
        latency = time.monotonic() - stored
        print(f"\nallotment reached -> client.show_message: {latency:.2f} s "
              f"(bound update_s + poll_s = {UPDATE_S + POLL_S:g} s plus one accounting query)", file=sys.stderr)
        assert latency < UPDATE_S + POLL_S + 2.0, latency          # slack for a loaded machine
        [message] = show_messages(miner)
        assert message.startswith("hourly_volume_used_up: the grid power allotted to day-ahead login:demo for ")
        assert " kWh) is used up: " in message and " kWh estimated from accepted work until " in message

        late = await miner.request("mining.submit", miner.mine_share(extranonce2=50))
        assert late["error"][0] == 24                     # no longer counted
        await miner.wait_for(lambda: miner.closed, timeout=GRACE_S + 3)
        again = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
        await again.request("mining.subscribe", [])
        refused = await again.request("mining.authorize", ["demo.rig2", "x"])
        assert refused["error"][0] == 24 and refused["error"][1].startswith("hourly_volume_used_up: ")
        await again.close()

        registry = app.metrics.registry
        assert registry.get_sample_value("kzpool_hourly_volumes_used_up", {"scope": "login"}) == 1
        assert registry.get_sample_value("kzpool_authorize_refusals_total", {"reason": "hourly_volume_used_up"}) >= 1
        assert registry.get_sample_value("kzpool_energy_estimate_age_seconds") < UPDATE_S + 2
    finally:
        await app.stop()
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT kind, payload FROM audit_log ORDER BY seq"))).all()
        blocks = [json.loads(r.payload) for r in rows if r.kind == "curtailment"]
        volume = [b for b in blocks if b["cause"] == "volume"]
        assert [(b["action"], b["subject"]) for b in volume][:1] == [("block", "login:demo")]
        assert volume[0]["allowed_kw"] == f"{allowed_kw:g}" and volume[0]["logins"] == 1
        refusals = [json.loads(r.payload) for r in rows if r.kind == "authorization"
                    and json.loads(r.payload)["reason"] == "hourly_volume_used_up"]
        assert refusals and refusals[0]["decision"] == "refused"
    finally:
        await db.close()
