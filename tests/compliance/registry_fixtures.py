"""Registry fixtures: a migrated database on each backend (tests/db_fixtures.py's approach: SQLite
file copied from a migrated template, PostgreSQL database migrated once and emptied per test), a
PII box with a fixed test key, a settable clock, and CSV builders."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from compliance.models import Datacentre, DatacentreNetwork, Licence, LicenceEvent
from compliance.pii import PiiBox
from compliance.registry import REGISTRY_TABLES, LicenceRegistry
from db_fixtures import BACKENDS, migrated_database_url
from pool.db import Database

PII_KEY = bytes(range(32))
PII_KEY_HEX = PII_KEY.hex()
# A fixed "now" for tests that do not exercise time: noon in Kazakhstan, 15 June 2026.
NOON_KZ = datetime(2026, 6, 15, 7, 0, tzinfo=UTC)
REGTEST_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"

# Owners and miners: the published examples (KZ-REGULATION.md), so no real person's number.
OWNER_EKI = "940140000385"
OWNER_ALA = "950341000052"
ALICE_IIN = "791028302728"
BOLAT_BIN = "961141000023"
CASPIAN_BIN = "070941024691"
DANA_IIN = "061211600012"
EVERY_PERSONAL_VALUE = (OWNER_EKI, OWNER_ALA, ALICE_IIN, BOLAT_BIN, CASPIAN_BIN, DANA_IIN,
                        "Alice Ivanova IE", "Bolat Energy LLP", "Caspian Hash JSC", "Dana Seitova IE")

DC_HEADER = "id,name,region,address,owner_iin_bin,cidrs"
LICENCE_HEADER = ("login,iin_bin,name,licence_no,subtype,issued,expires,status,suspended_until,datacentre,"
                  "payout_address")
DATACENTRES = "\n".join([
    DC_HEADER,
    f'dc-eki,Ekibastuz DC,Pavlodar,"Ekibastuz, industrial zone 1",{OWNER_EKI},10.10.0.0/16 2001:db8:10::/48',
    f"dc-ala,Almaty DC,Almaty,Almaty Alatau 5,{OWNER_ALA},192.0.2.0/24 127.0.0.1/32",
]) + "\n"


class SettableClock:
    """The registry's and authorizer's clock, moved by the test."""

    def __init__(self, now: datetime = NOON_KZ) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def licence_line(login: str, iin_bin: str, name: str, licence_no: str, *, subtype: str = "I",
                 issued: date | str = date(2025, 1, 10), expires: str = "", status: str = "active",
                 suspended_until: str = "", datacentre: str = "dc-ala", payout: str = REGTEST_ADDRESS) -> str:
    return ",".join([login, iin_bin, name, licence_no, subtype, str(issued), expires, status, suspended_until,
                     datacentre, payout])


def licences_csv(*lines: str) -> str:
    return "\n".join([LICENCE_HEADER, *lines]) + "\n"


GOOD_LICENCES = licences_csv(
    licence_line("alice", ALICE_IIN, "Alice Ivanova IE", "KZ-DM-0001", subtype="II", datacentre="dc-eki"),
    licence_line("bolat", BOLAT_BIN, "Bolat Energy LLP", "KZ-DM-0002", subtype="I", datacentre="dc-eki"),
    licence_line("caspian", CASPIAN_BIN, "Caspian Hash JSC", "KZ-DM-0003", status="suspended",
                 suspended_until="2026-08-01"),
)


async def registry_dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every registry table, for "the database is unchanged" checks."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with db.engine.connect() as conn:
        for model in (Datacentre, DatacentreNetwork, Licence, LicenceEvent):
            rows = await conn.execute(select(model.__table__).order_by(*model.__table__.primary_key))
            out[model.__tablename__] = [tuple(r) for r in rows]
    return out


@pytest.fixture(params=BACKENDS)
async def registry_db(request: pytest.FixtureRequest, tmp_path: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    """A database at this kzpool's schema with an empty registry, on each backend."""
    async with migrated_database_url(request.param, tmp_path, tmp_path_factory.getbasetemp()) as url:
        db = Database(url)
        try:
            if db.dialect == "postgresql":   # the shared PostgreSQL database keeps rows between tests
                async with db.engine.begin() as conn:
                    for table in REGISTRY_TABLES:
                        await conn.exec_driver_sql(f"DELETE FROM {table}")
            yield db
        finally:
            await db.close()


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def registry(registry_db: Database, clock: SettableClock) -> LicenceRegistry:
    return LicenceRegistry(registry_db, PiiBox(PII_KEY), clock=clock)
