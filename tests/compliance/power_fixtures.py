"""Fixtures for attestation, schedule, curtailment and energy tests: a migrated database (SQLite
copied from a template migrated once per run; PostgreSQL a fresh database), GeoIP MMDB files
built with mmdb-writer, RIR delegated-stats files, shares inserted at chosen times."""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator, Iterable
from itertools import count
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from sqlalchemy import insert, select

from compliance.pii import PiiBox
from compliance.registry import LicenceRegistry
from db_fixtures import create_postgres_database, require_postgres
from pool.db import Database
from pool.models import Account, Share, Worker
from registry_fixtures import DC_HEADER, OWNER_ALA, OWNER_EKI, PII_KEY

KZ_ADDRESS = "2.72.10.20"          # in 2.72.0.0/13, delegated to KZ (Kazakhtelecom)
KZ_ODD_ADDRESS = "95.61.255.254"   # inside a KZ delegation of 393216 hosts (not a CIDR)
FOREIGN_ADDRESS = "8.8.8.8"
DELEGATED = """2|ripencc|20261127|5|19830705|20261127|+0100
# a comment
ripencc|*|ipv4|*|4|summary
ripencc|KZ|ipv4|2.72.0.0|524288|20100630|allocated
ripencc|KZ|ipv4|95.56.0.0|393216|20080311|allocated
ripencc|KZ|ipv4|185.22.64.0|1024|20140101|reserved
ripencc|DE|ipv4|8.8.0.0|65536|20000101|allocated
ripencc|KZ|ipv6|2a00:5da0::|29|20120101|assigned
"""
DATACENTRES = "\n".join([
    DC_HEADER,
    f"dc-kz,Almaty Hosting,Almaty,Almaty Alatau 7,{OWNER_EKI},2.72.10.0/24 95.56.0.0/13",
    f"dc-loop,Loopback DC,Almaty,this machine,{OWNER_ALA},127.0.0.0/29 ::1/128",
]) + "\n"

_template: dict[str, str] = {}


async def migrated_sqlite(tmp_path: Path, template_dir: Path) -> str:
    if "sqlite" not in _template:
        url = f"sqlite+aiosqlite:///{template_dir}/power-template.sqlite3"
        db = Database(url)
        await db.upgrade()
        await db.close()
        _template["sqlite"] = url.split("///", 1)[1]
    shutil.copyfile(_template["sqlite"], tmp_path / "power.sqlite3")
    return f"sqlite+aiosqlite:///{tmp_path}/power.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
async def power_db(request: pytest.FixtureRequest, tmp_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    """A database at this kzpool's schema, on each backend."""
    if request.param == "postgresql":
        await require_postgres()
        url = await create_postgres_database()
        db = Database(url)
        await db.upgrade()
    else:
        db = Database(await migrated_sqlite(tmp_path, tmp_path_factory.getbasetemp()))
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def sqlite_power_db(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    db = Database(await migrated_sqlite(tmp_path, tmp_path_factory.getbasetemp()))
    try:
        yield db
    finally:
        await db.close()


async def import_registry(db: Database, licences_csv: str | None = None) -> LicenceRegistry:
    registry = LicenceRegistry(db, PiiBox(PII_KEY))
    assert (await registry.import_datacentres(DATACENTRES)).applied
    if licences_csv:
        report = await registry.import_licences(licences_csv)
        assert report.applied, report.lines()
    return registry


def write_mmdb(path: Path, networks: dict[str, dict]) -> str:
    """An MMDB (IPv6 tree with IPv4 mapped, as GeoLite2) of cidr -> record."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return str(path)


def country(code: str) -> dict:
    return {"country": {"iso_code": code, "names": {"en": code}}}


def geoip_file(tmp_path: Path) -> str:
    return write_mmdb(tmp_path / "country.mmdb", {
        "2.72.0.0/13": country("KZ"), "95.56.0.0/13": country("KZ"), "8.8.8.0/24": country("US"),
        "185.22.64.0/22": {"registered_country": {"iso_code": "KZ"}}})


def delegated_file(tmp_path: Path) -> str:
    path = tmp_path / "delegated-ripencc-latest"
    path.write_text(DELEGATED)
    return str(path)


_share_ids = count(1)


async def insert_shares(db: Database, worker: str, shares: Iterable[tuple[int, float]]) -> int:
    """Store accepted shares (time_us, difficulty) of `worker` (`login.rig`); returns how many."""
    login = worker.partition(".")[0]
    async with db.engine.begin() as conn:
        account_id = (await conn.execute(select(Account.id).where(Account.login == login))).scalar()
        if account_id is None:
            account_id = (await conn.execute(insert(Account).values(login=login).returning(Account.id))).scalar_one()
        worker_id = (await conn.execute(select(Worker.id).where(Worker.name == worker))).scalar()
        if worker_id is None:
            worker_id = (await conn.execute(insert(Worker).values(account_id=account_id, name=worker)
                                            .returning(Worker.id))).scalar_one()
        rows = [{"share_hash": hashlib.sha256(next(_share_ids).to_bytes(8, "big")).digest(), "worker_id": worker_id,
                 "time_us": t, "job_id": "1", "height": 1, "difficulty": d, "is_block": False,
                 "extranonce1": b"\0" * 4, "extranonce2": b"\0" * 8, "ntime": 0, "nonce": 0, "version": 0,
                 "peer": "127.0.0.1:1"} for t, d in shares]
        if rows:
            await conn.execute(insert(Share), rows)
    return len(rows)
