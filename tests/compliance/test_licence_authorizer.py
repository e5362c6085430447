"""RegistryAuthorizer on a real registry (SQLite and PostgreSQL), no sockets: every refusal by name,
dates judged in Kazakhstan time, data-centre ranges, audit payloads without personal data,
exponential backoff of refusals per address, and a revocation racing an authorization."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from compliance.authorizer import RegistryAuthorizer
from compliance.backoff import RefusalBackoff, backoff_key
from compliance.pii import PiiBox
from compliance.registry import LicenceRegistry
from pool.db import Database
from stratum.interfaces import Account, Peer, Refusal

from registry_fixtures import (ALICE_IIN, DANA_IIN, DATACENTRES, EVERY_PERSONAL_VALUE,  # noqa: F401
                               GOOD_LICENCES, PII_KEY, SettableClock, clock, licence_line, licences_csv, registry,
                               registry_db)

MORE_LICENCES = licences_csv(
    licence_line("dana", DANA_IIN, "Dana Seitova IE", "KZ-DM-0004", issued="2023-06-16"),   # expires 2026-06-16
    licence_line("erlan", "000229500018", "Erlan IE", "KZ-DM-0005", status="revoked"),
    licence_line("farida", "990140004654", "Farida Mining LLP", "KZ-DM-0006", issued="2026-07-01"),
)


class Recorder:
    def __init__(self) -> None:
        self.audit: list[tuple[str, dict[str, Any]]] = []
        self.sleeps: list[float] = []

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        self.audit.append((kind, payload))

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
async def seeded(registry: LicenceRegistry) -> LicenceRegistry:
    assert (await registry.import_datacentres(DATACENTRES)).applied
    assert (await registry.import_licences(GOOD_LICENCES)).applied
    assert (await registry.import_licences(MORE_LICENCES)).applied
    return registry


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def authorizer(registry: LicenceRegistry, clock: SettableClock, rec: Recorder, require_ip: bool = True,
               backoff: RefusalBackoff | None = None) -> RegistryAuthorizer:
    return RegistryAuthorizer(registry, require_ip, clock, rec.record,
                              backoff=backoff or RefusalBackoff(base_s=0.0, max_s=0.0), sleep=rec.sleep)


CASES = [
    ("alice.rig1", "10.10.1.5", None),                           # subtype II in dc-eki
    ("alice.rig1", "::ffff:10.10.1.5", None),                    # dual-stack listener's view of IPv4
    ("alice.rig2", "2001:db8:10::77", None),
    ("bolat.s19", "10.10.200.1", None),
    ("alice.rig1", "192.0.2.10", "address_outside_datacentre"),  # dc-ala's range, not alice's
    ("alice.rig1", "not-an-address", "address_outside_datacentre"),
    ("nobody.rig1", "10.10.1.5", "unknown_login"),
    (".rig1", "10.10.1.5", "unknown_login"),
    ("caspian.rig1", "192.0.2.10", "licence_suspended"),         # until 2026-08-01
    ("dana.rig1", "192.0.2.10", None),                           # expires 2026-06-16, today is 06-15
    ("erlan.rig1", "192.0.2.10", "licence_revoked"),
    ("farida.rig1", "192.0.2.10", "licence_not_yet_valid"),
]


@pytest.mark.parametrize("worker, host, reason", CASES)
async def test_decisions(seeded: LicenceRegistry, clock: SettableClock, rec: Recorder, worker: str, host: str,
                         reason: str | None) -> None:
    result = await authorizer(seeded, clock, rec).authorize(worker, "x", Peer(host, 4000))
    if reason is None:
        assert result == Account(login=worker.split(".")[0], worker=worker)
    else:
        assert isinstance(result, Refusal) and result.reason == reason
        assert result.message.startswith(reason + ": ")
    kind, payload = rec.audit[-1]
    assert kind == "authorization" and payload["decision"] == ("accepted" if reason is None else "refused")
    assert payload["reason"] == (reason or "licence_valid")


async def test_address_check_can_be_turned_off(seeded: LicenceRegistry, clock: SettableClock,
                                               rec: Recorder) -> None:
    auth = authorizer(seeded, clock, rec, require_ip=False)
    assert isinstance(await auth.authorize("alice.rig1", "x", Peer("192.0.2.10", 1)), Account)


async def test_days_end_at_midnight_in_kazakhstan(seeded: LicenceRegistry, clock: SettableClock,
                                                  rec: Recorder) -> None:
    auth = authorizer(seeded, clock, rec)
    clock.now = datetime(2026, 6, 15, 18, 59, 59, tzinfo=UTC)          # 23:59:59 in Astana
    assert isinstance(await auth.authorize("dana.rig1", "x", Peer("192.0.2.10", 1)), Account)
    clock.now = datetime(2026, 6, 15, 19, 0, 0, tzinfo=UTC)            # 00:00 on 16 June in Astana
    result = await auth.authorize("dana.rig1", "x", Peer("192.0.2.10", 1))
    assert isinstance(result, Refusal) and result.reason == "licence_expired" and "2026-06-16" in result.message
    clock.now = datetime(2026, 7, 31, 19, 0, 0, tzinfo=UTC)            # the suspension's end, KZ time
    assert isinstance(await auth.authorize("caspian.rig1", "x", Peer("192.0.2.10", 1)), Account)
    clock.now = datetime(2026, 6, 30, 19, 0, 0, tzinfo=UTC)            # farida's licence starts 1 July
    assert isinstance(await auth.authorize("farida.rig1", "x", Peer("192.0.2.10", 1)), Account)


async def test_audit_payloads_carry_no_personal_data(seeded: LicenceRegistry, clock: SettableClock,
                                                     rec: Recorder) -> None:
    auth = authorizer(seeded, clock, rec)
    for worker, host, _ in CASES:
        await auth.authorize(worker, "x", Peer(host, 1))
    await auth.authorize(f"{ALICE_IIN}.rig1", "x", Peer("10.10.1.5", 1))   # someone mining under their IIN
    await auth.authorize(f"alice.{ALICE_IIN}", "x", Peer("10.10.1.5", 1))
    dump = json.dumps([p for _, p in rec.audit])
    assert len(rec.audit) == len(CASES) + 2
    for value in EVERY_PERSONAL_VALUE:
        assert value not in dump
    assert rec.audit[-1][1]["worker"] == "alice.********2728"
    assert rec.audit[0][1]["licence_no"] == "KZ-DM-0001" and rec.audit[0][1]["datacentre"] == "dc-eki"


async def test_refusals_from_one_address_back_off_exponentially(seeded: LicenceRegistry, clock: SettableClock,
                                                                rec: Recorder) -> None:
    auth = authorizer(seeded, clock, rec, backoff=RefusalBackoff(base_s=1.0, max_s=8.0))
    for _ in range(6):
        assert isinstance(await auth.authorize("nobody.rig", "x", Peer("198.51.100.7", 1)), Refusal)
    assert rec.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0]                      # the first refusal is immediate
    # A licensed rig behind the same address is never held back; another address starts afresh.
    assert isinstance(await auth.authorize("alice.rig1", "x", Peer("10.10.1.5", 1)), Account)
    await auth.authorize("nobody.rig", "x", Peer("198.51.100.8", 1))
    assert rec.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_backoff_forgets_and_groups_ipv6_by_64() -> None:
    now = [0.0]
    backoff = RefusalBackoff(base_s=0.5, max_s=30.0, forget_after_s=60.0, clock=lambda: now[0])
    assert [backoff.refusal_delay("2001:db8::1"), backoff.refusal_delay("2001:db8::2")] == [0.0, 0.5]
    now[0] = 61.0
    assert backoff.refusal_delay("2001:db8::3") == 0.0                 # forgotten after a quiet minute
    assert backoff_key("::ffff:192.0.2.1") == "192.0.2.1"
    small = RefusalBackoff(max_tracked=4, clock=lambda: now[0])
    for i in range(20):
        small.refusal_delay(f"192.0.2.{i}")
    assert small.tracked() <= 4


async def test_revocation_racing_an_authorization_wins(seeded: LicenceRegistry, clock: SettableClock,
                                                       rec: Recorder) -> None:
    auth = authorizer(seeded, clock, rec)
    task = asyncio.create_task(auth.authorize("alice.rig1", "x", Peer("10.10.1.5", 1)))
    await asyncio.sleep(0)                       # the task is now waiting on the database
    auth.mark_invalid("alice", "licence_revoked")
    result = await task
    assert isinstance(result, Refusal) and result.reason == "licence_revoked"
    assert not auth.is_still_valid("alice")
    # A mark older than the registry read is stale: the fresh read says valid, and it is cleared.
    assert isinstance(await auth.authorize("alice.rig1", "x", Peer("10.10.1.5", 1)), Account)
    assert auth.is_still_valid("alice")


async def test_registry_down_refuses_without_backoff(clock: SettableClock, rec: Recorder) -> None:
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")   # connection refused
    try:
        auth = authorizer(LicenceRegistry(unreachable, PiiBox(PII_KEY), clock=clock), clock, rec,
                          backoff=RefusalBackoff(base_s=1.0, max_s=8.0))
        for _ in range(3):
            result = await auth.authorize("alice.rig1", "x", Peer("10.10.1.5", 1))
            assert isinstance(result, Refusal) and result.reason == "registry_unavailable"
        assert rec.sleeps == []                    # our outage is not the miner's fault
    finally:
        await unreachable.close()
