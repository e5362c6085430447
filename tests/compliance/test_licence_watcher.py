"""LicenceWatcher on a real registry (SQLite and PostgreSQL): changes recorded through another
registry handle (as another process would), expiry and suspension at Kazakhstan midnight, each
licence reported once, the authorizer's share-path cache kept current."""
from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest

from compliance.authorizer import RegistryAuthorizer
from compliance.pii import PiiBox
from compliance.registry import LicenceRegistry
from compliance.watcher import LicenceWatcher
from pool.db import Database

from registry_fixtures import (DANA_IIN, DATACENTRES, GOOD_LICENCES, PII_KEY, SettableClock, clock,  # noqa: F401
                               licence_line, licences_csv, registry, registry_db)


class Calls(list[tuple[str, str]]):
    def __call__(self, login: str, text: str) -> None:
        self.append((login, text))


@pytest.fixture
async def seeded(registry: LicenceRegistry) -> LicenceRegistry:
    assert (await registry.import_datacentres(DATACENTRES)).applied
    assert (await registry.import_licences(GOOD_LICENCES)).applied
    extra = licences_csv(licence_line("dana", DANA_IIN, "Dana Seitova IE", "KZ-DM-0004", issued="2023-06-16"))
    assert (await registry.import_licences(extra)).applied
    return registry


def other_process(registry_db: Database, clock: SettableClock) -> LicenceRegistry:
    """A second handle on the same database, like the CLI in another process."""
    return LicenceRegistry(Database(registry_db.url.render_as_string(hide_password=False)), PiiBox(PII_KEY),
                           clock=clock)


async def test_status_changes_reported_once_and_cache_follows(seeded: LicenceRegistry, registry_db: Database,
                                                              clock: SettableClock) -> None:
    auth = RegistryAuthorizer(seeded, True, clock)
    calls = Calls()
    watcher = LicenceWatcher(seeded, calls, clock=clock, authorizer=auth)
    assert await watcher.poll_once() == []                  # the baseline reports nothing...
    assert not auth.is_still_valid("caspian")               # ...but the share path knows at once
    assert auth.is_still_valid("alice")

    cli = other_process(registry_db, clock)
    try:
        await cli.revoke("alice", "licence withdrawn by order 7")
        await cli.suspend("bolat", date(2026, 9, 1), "unpaid mining fee")
        newly = await watcher.poll_once()
        assert sorted(newly) == [("alice", "licence_revoked"), ("bolat", "licence_suspended")]
        assert ("alice", "licence_revoked: the licence of login 'alice' is revoked (licence withdrawn by order 7)") \
            in calls
        assert not auth.is_still_valid("alice") and not auth.is_still_valid("bolat")
        assert await watcher.poll_once() == []              # reported once, not at every poll

        await cli.reinstate("bolat", "fee paid")
        assert await watcher.poll_once() == []
        assert auth.is_still_valid("bolat")
        await cli.revoke("bolat", "second offence")          # valid -> invalid again: reported again
        assert await watcher.poll_once() == [("bolat", "licence_revoked")]
    finally:
        await cli.db.close()


async def test_expiry_and_suspension_end_at_kazakhstan_midnight(seeded: LicenceRegistry,
                                                                clock: SettableClock) -> None:
    calls = Calls()
    watcher = LicenceWatcher(seeded, calls, clock=clock)
    clock.now = datetime(2026, 6, 15, 18, 59, 59, tzinfo=UTC)       # 23:59:59 on 15 June in Astana
    await watcher.poll_once()
    clock.now = datetime(2026, 6, 15, 19, 0, 1, tzinfo=UTC)         # still 15 June in UTC, 16 June in KZ
    assert await watcher.poll_once() == [("dana", "licence_expired")]
    assert "expired on 2026-06-16" in calls[0][1]
    clock.now = datetime(2026, 7, 31, 19, 0, 1, tzinfo=UTC)         # caspian's suspension ended
    assert await watcher.poll_once() == []
    assert "caspian" not in (watcher._invalid or {})


async def test_background_polling_reaches_a_change_within_two_intervals(seeded: LicenceRegistry,
                                                                        registry_db: Database,
                                                                        clock: SettableClock) -> None:
    calls = Calls()
    watcher = LicenceWatcher(seeded, calls, clock=clock, interval_s=0.1)
    await watcher.start()
    cli = other_process(registry_db, clock)
    try:
        await cli.revoke("alice", "test")
        async with asyncio.timeout(2):
            while not calls:
                await asyncio.sleep(0.02)
        assert calls[0][0] == "alice"
    finally:
        await watcher.stop()
        await cli.db.close()


async def test_a_failing_callback_or_database_does_not_stop_the_watcher(seeded: LicenceRegistry,
                                                                        clock: SettableClock) -> None:
    def broken(login: str, text: str) -> None:
        raise RuntimeError("server gone")

    watcher = LicenceWatcher(seeded, broken, clock=clock)
    await watcher.poll_once()
    await seeded.revoke("alice", "x")
    assert await watcher.poll_once() == [("alice", "licence_revoked")]     # logged, not raised
    with pytest.raises(ValueError):
        LicenceWatcher(seeded, broken, interval_s=5.0)


async def test_poll_failures_are_counted_and_polling_goes_on(clock: SettableClock) -> None:
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    watcher = LicenceWatcher(LicenceRegistry(unreachable, PiiBox(PII_KEY)), Calls(), clock=clock, interval_s=0.05)
    watcher._invalid = {}
    watcher._task = asyncio.create_task(watcher._run())
    try:
        async with asyncio.timeout(5):
            while watcher.failed_polls < 2:
                await asyncio.sleep(0.02)
    finally:
        await watcher.stop()
        await unreachable.close()


async def test_incremental_polls_and_the_full_scan_safety_net(seeded: LicenceRegistry, registry_db: Database,
                                                             clock: SettableClock) -> None:
    calls = Calls()
    watcher = LicenceWatcher(seeded, calls, clock=clock, full_scan_s=3600)
    await watcher.poll_once()
    # A row edited by hand in SQL does not bump change_seq: incremental polls cannot see it...
    async with registry_db.engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE licences SET status = 'revoked' WHERE login = 'alice'")
    assert await watcher.poll_once() == []
    # ...the periodic full read does.
    watcher.full_scan_s = 0.0
    assert await watcher.poll_once() == [("alice", "licence_revoked")]
    # Changes through the registry take change_seq numbers in commit order.
    _, seq_before = await seeded.licence_dates()
    await seeded.suspend("bolat", date(2026, 7, 1), "x")
    changed, seq_after = await seeded.licence_dates(seq_before)
    assert [lic.login for lic in changed] == ["bolat"] and seq_after == seq_before + 1


async def test_licence_records_are_kept_between_authorizations_until_their_row_changes(
        seeded: LicenceRegistry, registry_db: Database, clock: SettableClock) -> None:
    """A reconnect storm reads each login once; a change to the licence row (seen by the watcher)
    or the record's age makes the next authorization read the registry again."""
    from stratum.interfaces import Account, Peer, Refusal
    now = [1000.0]
    auth = RegistryAuthorizer(seeded, False, clock, sleep=lambda _s: asyncio.sleep(0), record_cache_s=30.0,
                              monotonic=lambda: now[0])
    watcher = LicenceWatcher(seeded, Calls(), clock=clock, authorizer=auth)
    await watcher.poll_once()
    peer = Peer("198.51.100.7", 4000)
    for rig in range(5):
        assert isinstance(await auth.authorize(f"alice.rig{rig}", "x", peer), Account)
        assert isinstance(await auth.authorize(f"bolat.rig{rig}", "x", peer), Account)
    assert auth.registry_reads == 2                          # one read per login, not per rig
    assert isinstance(await auth.authorize("nobody.rig1", "x", peer), Refusal)
    assert isinstance(await auth.authorize("nobody.rig2", "x", peer), Refusal)
    assert auth.registry_reads == 4                          # unknown logins are never kept

    cli = other_process(registry_db, clock)
    try:
        await cli.revoke("alice", "licence withdrawn by order 9")
        await watcher.poll_once()
        refused = await auth.authorize("alice.rig9", "x", peer)
        assert isinstance(refused, Refusal) and refused.reason == "licence_revoked"
        assert auth.registry_reads == 5                      # the changed row was read again
        assert isinstance(await auth.authorize("bolat.rig9", "x", peer), Account)
        assert auth.registry_reads == 5                      # bolat's row did not change: still kept
        now[0] += 31.0
        assert isinstance(await auth.authorize("bolat.rig10", "x", peer), Account)
        assert auth.registry_reads == 6                      # aged out: read again
    finally:
        await cli.db.close()
