"""Location attestation: evidence from a real MMDB (built with mmdb-writer) and a delegated-stats
file, the verdict, its storage and audit record, enforce vs warn, and the payout gate."""
from __future__ import annotations

import asyncio
import ipaddress
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from compliance import audit_events
from compliance.attestation import LocationAttestor
from compliance.attestation_evidence import CountryDatabase, parse_delegated
from compliance.location_gate import LocationPayoutGate, latest_verdicts
from compliance.power_models import LocationAttestation
from compliance.work_gate import GatedAuthorizer, WorkGate, node_gate
from pool.db import Database
from registry_fixtures import SettableClock
from stratum.interfaces import Account, Peer, Refusal

from power_fixtures import (DELEGATED, FOREIGN_ADDRESS, KZ_ADDRESS, KZ_ODD_ADDRESS, delegated_file, geoip_file,
                            import_registry, power_db, write_mmdb)  # noqa: F401  (fixture)

KZ = timedelta(hours=5)


def test_delegated_stats_keep_kz_allocations_with_host_counts_not_prefixes() -> None:
    ranges = parse_delegated(DELEGATED, "KZ")
    assert len(ranges.v4) == 2 and len(ranges.v6) == 1      # summary, comment, reserved and DE skipped
    # 393216 hosts from 95.56.0.0 is not a CIDR: the last address is 95.61.255.255.
    assert ranges.find(ipaddress.ip_address("95.61.255.255")) is not None
    assert ranges.find(ipaddress.ip_address("95.62.0.0")) is None
    assert ranges.find(ipaddress.ip_address("95.55.255.255")) is None
    assert ranges.find(ipaddress.ip_address("2a00:5da7:ffff::1")) is not None     # inside the /29
    assert ranges.find(ipaddress.ip_address("2a00:5da8::1")) is None
    assert ranges.find(ipaddress.ip_address("185.22.64.1")) is None               # reserved is not delegated


def test_geoip_falls_back_to_registered_country(tmp_path: Path) -> None:
    countries = CountryDatabase(geoip_file(tmp_path))
    found = countries.countries([ipaddress.ip_address("185.22.64.9"), ipaddress.ip_address("1.1.1.1")], "KZ")
    assert (found[0].result, found[0].found) == ("pass", "KZ")
    assert (found[1].result, found[1].detail) == ("unknown", "address not in the GeoIP database")


def attestor(db: Database, tmp_path: Path, addresses: list[str], *, mode: str = "warn", offset: timedelta = KZ,
             mmdb: str | None = None, delegated: str | None = None, **kw) -> LocationAttestor:
    return LocationAttestor(db, node_id="node-a", datacentre_id="dc-kz", public_addresses=addresses,
                            mmdb_path=geoip_file(tmp_path) if mmdb is None else mmdb,
                            delegated_stats_path=delegated_file(tmp_path) if delegated is None else delegated,
                            mode=mode, host_offset=lambda: offset, **kw)


async def test_a_kz_address_passes_and_the_verdict_is_stored_and_audited(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    records: list[tuple[str, dict]] = []
    node = attestor(power_db, tmp_path, [KZ_ADDRESS, KZ_ODD_ADDRESS], audit=lambda k, p: records.append((k, p)))
    verdict = await node.check_once()
    assert verdict.verdict == "pass", verdict.evidence
    kinds = sorted({(e.kind, e.result) for e in verdict.evidence})
    assert kinds == [("datacentre", "pass"), ("geoip", "pass"), ("rir", "pass"), ("utc_offset", "pass")]
    async with power_db.engine.connect() as conn:
        row = (await conn.execute(select(LocationAttestation.__table__))).one()
    assert (row.node_id, row.datacentre_id, row.verdict, row.mode) == ("node-a", "dc-kz", "pass", "warn")
    assert {e["subject"] for e in json.loads(row.evidence)} == {KZ_ADDRESS, KZ_ODD_ADDRESS, "host"}
    [(kind, payload)] = records
    assert kind == audit_events.LOCATION_CHECK == "location_check"
    assert payload["action"] == "pass" and payload["subject"] == "node-a" and len(payload["evidence"]) == 7
    assert (await latest_verdicts(power_db))["node-a"][1] == "pass"


async def test_a_foreign_address_fails_with_each_piece_of_evidence(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    verdict = await attestor(power_db, tmp_path, [FOREIGN_ADDRESS]).check_once()
    assert verdict.verdict == "fail"
    by_kind = {e.kind: e for e in verdict.evidence}
    assert (by_kind["geoip"].result, by_kind["geoip"].found) == ("fail", "US")
    assert by_kind["rir"].result == "fail" and by_kind["datacentre"].result == "fail"
    assert "geoip 8.8.8.8 US" in verdict.summary()


async def test_a_missing_database_gives_unknown(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    node = attestor(power_db, tmp_path, [KZ_ADDRESS], mmdb=str(tmp_path / "absent.mmdb"),
                    delegated=str(tmp_path / "absent-delegated"))
    verdict = await node.check_once()
    assert verdict.verdict == "unknown"
    by_kind = {e.kind: e for e in verdict.evidence}
    assert by_kind["geoip"].result == "unknown" and "unreadable" in by_kind["geoip"].detail
    assert by_kind["rir"].result == "unknown" and by_kind["datacentre"].result == "pass"
    # A file that is not an MMDB at all is "unknown" too, never a crash.
    (tmp_path / "junk.mmdb").write_bytes(b"not a database")
    junk = await attestor(power_db, tmp_path, [KZ_ADDRESS], mmdb=str(tmp_path / "junk.mmdb")).check_once()
    assert junk.verdict == "unknown"


async def test_a_host_clock_outside_utc_plus_5_fails(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    verdict = await attestor(power_db, tmp_path, [KZ_ADDRESS], offset=timedelta(0)).check_once()
    assert verdict.verdict == "fail" and "utc_offset host UTC+00:00" in verdict.summary()


async def test_the_demo_default_is_unknown_and_never_blocks(power_db: Database) -> None:
    node = LocationAttestor(power_db, node_id="demo", host_offset=lambda: timedelta(0))   # a UTC machine
    verdict = await node.check_once()
    assert verdict.verdict == "unknown" and node.node_may_work()
    assert await LocationPayoutGate(power_db, mode="warn").payouts_blocked() is None


async def test_enforce_mode_needs_every_source() -> None:
    with pytest.raises(ValueError, match="location.mmdb_path, location.delegated_stats_path"):
        LocationAttestor(Database("sqlite+aiosqlite:///:memory:"), node_id="n", mode="enforce",
                         public_addresses=[KZ_ADDRESS], datacentre_id="dc-kz")
    with pytest.raises(ValueError, match="not an IP address"):
        LocationAttestor(Database("sqlite+aiosqlite:///:memory:"), node_id="n", public_addresses=["kz.example"])


async def test_enforce_mode_withholds_work_and_blocks_payouts(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    clock = SettableClock()
    accepted = [0]
    withheld: list[str] = []
    node = attestor(power_db, tmp_path, [FOREIGN_ADDRESS], mode="enforce", clock=clock,
                    on_withhold=withheld.append, shares_accepted=lambda: accepted[0])
    good = attestor(power_db, tmp_path, [KZ_ADDRESS], mode="enforce", clock=clock)
    good.node_id = "node-b"
    gate = LocationPayoutGate(power_db, mode="enforce", window_s=3600, clock=clock)
    assert await good.check_once() and good.node_may_work()

    verdict = await node.check_once()
    assert verdict.failed and not node.node_may_work()
    assert len(withheld) == 1 and withheld[0].startswith("location_attestation_failed: node node-a")
    # New authorizations are refused by the gate in front of the authorizer.
    inner_calls = []

    class Inner:
        async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
            inner_calls.append(worker)
            return Account(worker.partition(".")[0], worker)
    auth = GatedAuthorizer(Inner(), WorkGate([node_gate(node.node_may_work, node.withheld_text)]))
    refused = await auth.authorize("miner1.rig", "x", Peer("127.0.0.1", 1))
    assert isinstance(refused, Refusal) and refused.reason == "location_attestation_failed" and not inner_calls

    # A failed node that produced no shares in the window does not block payouts ...
    assert await gate.payouts_blocked() is None
    # ... one that did (shares accepted before the failure took effect) does.
    accepted[0] = 5
    await node.flush_activity()
    reason = await gate.payouts_blocked()
    assert reason is not None and reason.startswith("location_attestation_failed: node node-a")
    assert "geoip 8.8.8.8 US" in reason
    # Warn mode reads the same table and blocks nothing.
    assert await LocationPayoutGate(power_db, mode="warn", clock=clock).payouts_blocked() is None

    # Fixed (the address was a misconfiguration): the next check passes, work and payouts resume.
    node.addresses = (ipaddress.ip_address(KZ_ADDRESS),)
    clock.advance(minutes=1)
    assert (await node.check_once()).verdict == "pass" and node.node_may_work()
    assert await gate.payouts_blocked() is None
    # The window matters: shares from long before the window do not make a node count.
    clock.advance(hours=3)
    node.addresses = (ipaddress.ip_address(FOREIGN_ADDRESS),)
    await node.check_once()
    assert await gate.payouts_blocked() is None


async def test_warn_mode_records_a_failure_and_withholds_nothing(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    withheld: list[str] = []
    node = attestor(power_db, tmp_path, [FOREIGN_ADDRESS], on_withhold=withheld.append, shares_accepted=lambda: 3)
    assert (await node.check_once()).failed
    assert node.node_may_work() and not withheld


async def test_the_attestor_checks_again_every_interval(power_db: Database, tmp_path: Path) -> None:
    await import_registry(power_db)
    mmdb = tmp_path / "country.mmdb"
    node = attestor(power_db, tmp_path, [KZ_ADDRESS], mode="enforce", check_interval_s=0.2, mmdb=str(mmdb))
    write_mmdb(mmdb, {"2.72.0.0/13": {"country": {"iso_code": "KZ"}}})
    await node.start()
    try:
        assert node.latest is not None and node.latest.verdict == "pass"
        # The operator's weekly GeoIP update moves the range abroad: the next check fails.
        write_mmdb(mmdb, {"2.72.0.0/13": {"country": {"iso_code": "RU"}}})
        for _ in range(50):
            if not node.node_may_work():
                break
            await asyncio.sleep(0.05)
        assert not node.node_may_work()
    finally:
        await node.stop()
