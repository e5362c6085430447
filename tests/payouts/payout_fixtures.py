"""Payout test fixtures: a migrated database on each backend (tests/db_fixtures.py's template copy
for SQLite, the shared PostgreSQL database emptied per test), shares written straight into the
shares table, a licence registry of test miners, a settable clock and the wallet stand-in."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from compliance.iin import make_iin
from compliance.pii import PiiBox
from compliance.registry import REGISTRY_TABLES, LicenceRegistry
from db_fixtures import BACKENDS, migrated_database_url
from payouts.ledger import Ledger
from pool.address import encode_segwit_address
from pool.db import Database
from pool.models import Account, Share, Worker
from wallet_standin import WalletStandin

PII_KEY = bytes(range(32))
NOON_KZ = datetime(2026, 6, 15, 7, 0, tzinfo=UTC)
PAYOUT_TABLES = ("ledger_entries", "ledger_txns", "payout_items", "payout_runs", "payout_rounds",
                 "pps_worker_minutes", "pps_accounts", "payout_exchange_deposits", "report_submitted_rows",
                 "report_submissions")
POOL_TABLES = ("worker_stats_minute", "blocks", "shares", "workers", "accounts")


def regtest_address(name: str) -> str:
    return encode_segwit_address("bcrt", 0, sha256(name.encode()).digest()[:20])


class SettableClock:
    """A clock for both kinds of callers: `clock()` unix seconds, `clock.now()` an aware datetime."""

    def __init__(self, moment: datetime = NOON_KZ) -> None:
        self.moment = moment

    def __call__(self) -> float:
        return self.moment.timestamp()

    def now(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


async def empty_payout_tables(db: Database) -> None:
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            for table in ("ledger_txns", "ledger_entries"):
                await conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for table in PAYOUT_TABLES + REGISTRY_TABLES + POOL_TABLES:
            await conn.exec_driver_sql(f"DELETE FROM {table}")
        if db.dialect == "postgresql":
            for table in ("ledger_txns", "ledger_entries"):
                await conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.fixture(params=BACKENDS)
async def payout_db(request: pytest.FixtureRequest, tmp_path: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with migrated_database_url(request.param, tmp_path, tmp_path_factory.getbasetemp()) as url:
        db = Database(url)
        try:
            if db.dialect == "postgresql":
                await empty_payout_tables(db)
            yield db
        finally:
            await db.close()


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def audit_records() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def ledger(payout_db: Database, clock: SettableClock, audit_records: list) -> Ledger:
    return Ledger(payout_db, audit=lambda kind, payload: audit_records.append((kind, payload)), clock=clock)


@pytest.fixture
async def wallet() -> AsyncIterator[WalletStandin]:
    standin = WalletStandin()
    await standin.start()
    yield standin
    await standin.close()


async def worker_ids(db: Database, names: Iterable[str]) -> dict[str, int]:
    """Get-or-create `login.rig` workers; returns worker name -> id."""
    out: dict[str, int] = {}
    async with db.engine.begin() as conn:
        for name in names:
            login = name.partition(".")[0]
            account = (await conn.execute(select(Account.id).where(Account.login == login))).scalar()
            if account is None:
                account = (await conn.execute(insert(Account).values(login=login).returning(Account.id))).scalar_one()
            worker = (await conn.execute(select(Worker.id).where(Worker.account_id == account,
                                                                 Worker.name == name))).scalar()
            if worker is None:
                worker = (await conn.execute(insert(Worker).values(account_id=account, name=name)
                                             .returning(Worker.id))).scalar_one()
            out[name] = worker
    return out


async def store_shares(db: Database, shares: list[tuple[str, float, int, bytes]], *, block_hashes: Iterable[bytes] = ()
                       ) -> None:
    """(worker name, difficulty, time_us, share_hash) rows, straight into the shares table."""
    ids = await worker_ids(db, {s[0] for s in shares})
    blocks = set(block_hashes)
    async with db.engine.begin() as conn:
        await conn.execute(insert(Share), [
            {"share_hash": h, "worker_id": ids[w], "time_us": t, "job_id": "1", "height": 100, "difficulty": d,
             "is_block": h in blocks, "extranonce1": b"\x00" * 4, "extranonce2": b"\x00" * 8, "ntime": 0,
             "nonce": 0, "version": 0x20000000, "peer": "127.0.0.1:1"} for w, d, t, h in shares])


def test_iin(n: int) -> str:
    """A structurally valid IIN for test miner n (not a real person's: born 1 Jan 1980 + n days)."""
    for serial in range(100 * n, 100 * n + 100):
        iin = make_iin(date(1980, 1, 1) + timedelta(days=n), "M", serial)
        if iin is not None:
            return iin
    raise AssertionError("no IIN")


test_iin.__test__ = False


def licences_csv(logins: Iterable[str], *, statuses: dict[str, str] | None = None) -> str:
    lines = ["login,iin_bin,name,licence_no,subtype,issued,expires,status,suspended_until,datacentre,payout_address"]
    for n, login in enumerate(logins, 1):
        iin = test_iin(n)
        status = (statuses or {}).get(login, "active")
        lines.append(f"{login},{iin},Miner {login.title()} IE,KZ-DM-{n:04d},II,2025-01-10,,{status},,dc-test,"
                     f"{regtest_address(login)}")
    return "\n".join(lines) + "\n"


DATACENTRES_CSV = ("id,name,region,address,owner_iin_bin,cidrs\n"
                   'dc-test,Test DC,Almaty,"Almaty, test street 1",940140000385,127.0.0.0/8\n')


async def seeded_registry(db: Database, logins: Iterable[str], clock: SettableClock,
                          audit: Any = None) -> LicenceRegistry:
    registry = LicenceRegistry(db, PiiBox(PII_KEY), clock=clock.now, audit=audit)
    assert (await registry.import_datacentres(DATACENTRES_CSV)).ok
    report = await registry.import_licences(licences_csv(logins))
    assert report.ok, report.lines()
    return registry


def share_hash(n: int) -> bytes:
    return sha256(f"share {n}".encode()).digest()
