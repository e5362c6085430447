"""Real-process tests of the share log (tests/sharelog_crash_driver.py plays the pool).

Crash: a client submits shares and records every `true`; the pool process is SIGKILLed at a random
moment (also while it is spilling); after a restart every acknowledged share is in the database
exactly once. Outage: the database goes away mid-run (SQLite file made unwritable or write-locked
by another process; PostgreSQL refusing connections behind a stopped proxy), the writers keep
getting acknowledgements from the spill file, and once the database is back the pool replays the
file on its own: every acknowledged share stored exactly once, without a restart."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from db_fixtures import (TIMEOUT_FACTOR, database_url, postgres_database_url,  # noqa: F401
                         sqlite_database_url)
from sharelog_harness import (DriverProcess, SubmittingClient, assert_stored_exactly_once,
                              can_make_immutable, proxied, sqlite_unwritable, sqlite_write_locked,
                              wait_until_stored)
from tcp_proxy import TcpProxy

SEED = int(os.environ.get("KZPOOL_CRASH_SEED", random.SystemRandom().randrange(2**32)))
ROUNDS = 3


async def submit_then_kill(driver: DriverProcess, first_index: int,
                           rng: random.Random) -> SubmittingClient:
    """Start submitting, SIGKILL the pool at a random moment once acknowledgements flow, and
    collect what was acknowledged."""
    client = SubmittingClient(driver.port, first_index)
    traffic = asyncio.create_task(client.run())
    deadline = asyncio.get_running_loop().time() + 10 * TIMEOUT_FACTOR
    while not client.acked and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(rng.uniform(0.0, 0.5))
    await driver.kill()
    await asyncio.wait_for(traffic, 10 * TIMEOUT_FACTOR)
    return client


async def test_sigkill_at_a_random_moment(database_url: str, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(SEED)
    driver = DriverProcess(database_url, tmp_path / "shares.spill", tmp_path / "driver.log")
    acked: set[tuple[str, str]] = set()
    for round_no in range(ROUNDS):
        await driver.start()  # replays whatever the killed run left in the spill file
        client = await submit_then_kill(driver, round_no * 1_000_000, rng)
        assert not client.refused, client.refused[:3]
        assert client.acked, f"round {round_no}: nothing acknowledged before the kill (seed {SEED})"
        acked |= client.acked
    await driver.start()
    await driver.stop()
    await assert_stored_exactly_once(database_url, acked)


async def test_sigkill_while_spilling(database_url: str, tmp_path: Path) -> None:  # noqa: F811
    """The database is away, acks come from the spill file, and then the pool dies."""
    rng = random.Random(SEED + 1)
    proxy: TcpProxy | None = None
    url = database_url
    if database_url.startswith("postgresql"):
        proxy, url = await proxied(database_url)
    driver = DriverProcess(url, tmp_path / "shares.spill", tmp_path / "driver.log",
                           commit_timeout_s=0.5)
    await driver.start()
    if proxy is not None:
        await proxy.stop()
        client = await submit_then_kill(driver, 0, rng)
        await proxy.start()
    else:
        with sqlite_write_locked(database_url):
            client = await submit_then_kill(driver, 0, rng)
    assert not client.refused and client.acked, (client.refused[:3], len(client.acked))
    assert (tmp_path / "shares.spill").stat().st_size > 0, "the outage never reached the spill file"
    await driver.start()  # the database is back: start() replays the spill file
    await driver.stop()
    assert (tmp_path / "shares.spill").stat().st_size == 0
    await assert_stored_exactly_once(database_url, client.acked)



Outage = Callable[[], AbstractAsyncContextManager[None]]


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * TIMEOUT_FACTOR
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def run_through_outage(url: str, tmp_path: Path, outage: Outage,
                             driver_url: str | None = None) -> None:
    spill = tmp_path / "shares.spill"
    driver = DriverProcess(driver_url or url, spill, tmp_path / "driver.log", commit_timeout_s=0.5)
    await driver.start()
    client = SubmittingClient(driver.port, 0)
    traffic = asyncio.create_task(client.run())
    await wait_for(lambda: len(client.acked) > 200, 10, "acknowledgements before the outage")

    async with outage():
        await wait_for(lambda: spill.exists() and spill.stat().st_size > 0, 10, "the spill file")
        acked_in_outage = len(client.acked)
        await wait_for(lambda: len(client.acked) > acked_in_outage + 500, 10,
                       "acknowledgements during the outage")
        await asyncio.sleep(0.6)  # long enough for the replayer to knock and fail (every 0.2 s)
    back = len(client.acked)
    await wait_for(lambda: len(client.acked) > back + 500, 10, "acknowledgements after it")
    client.stop()
    await asyncio.wait_for(traffic, 10 * TIMEOUT_FACTOR)
    assert not client.refused, client.refused[:3]

    await wait_until_stored(url, client.acked, timeout_s=15)
    await assert_stored_exactly_once(url, client.acked)
    await wait_for(lambda: spill.stat().st_size == 0, 10, "the spill file to be emptied")
    await driver.stop()


@pytest.mark.parametrize("how", ["unwritable", "write_locked"])
async def test_sqlite_outage(sqlite_database_url: str, tmp_path: Path, how: str) -> None:  # noqa: F811
    if how == "unwritable" and not can_make_immutable(tmp_path):
        pytest.skip("chattr +i needs root and ext4/xfs; write_locked covers the outage here")

    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        with (sqlite_unwritable if how == "unwritable" else sqlite_write_locked)(
                sqlite_database_url):
            yield

    await run_through_outage(sqlite_database_url, tmp_path, outage)


async def test_postgresql_refuses_connections(postgres_database_url: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    database_url = postgres_database_url
    proxy, driver_url = await proxied(database_url)

    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        await proxy.stop()  # open connections cut, new ones refused
        yield
        await proxy.start()

    try:
        await run_through_outage(database_url, tmp_path, outage, driver_url)
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


@pytest.fixture(autouse=True)
def report_seed(request: pytest.FixtureRequest) -> None:
    print(f"KZPOOL_CRASH_SEED={SEED}")
