"""The embedded default's registry: seeded once into an empty database, `demo` licensed from
loopback only, and the schema chain (0001 -> 0002 -> ...) with a single head that matches the models."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from compliance.authorizer import RegistryAuthorizer
from compliance.demo_registry import DEMO_LOGIN, seed_demo_registry
from compliance.models import Datacentre, DatacentreNetwork, Licence, LicenceEvent
from compliance.registry import REGISTRY_TABLES, LicenceRegistry
from pool.db import Database, alembic_config
from pool.models import Base
from stratum.interfaces import Account, Peer, Refusal

from registry_fixtures import DATACENTRES, clock, registry, registry_db, registry_dump  # noqa: F401


async def test_seeded_once_and_demo_mines_from_loopback_only(registry: LicenceRegistry,
                                                            registry_db: Database) -> None:
    assert await seed_demo_registry(registry) is True
    seeded = await registry_dump(registry_db)
    assert await seed_demo_registry(registry) is False          # idempotent: nothing added
    assert await registry_dump(registry_db) == seeded
    auth = RegistryAuthorizer(registry, True, registry.clock)
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert await auth.authorize("demo.cpu", "x", Peer(host, 1)) == Account(DEMO_LOGIN, "demo.cpu"), host
    refusal = await auth.authorize("demo.cpu", "x", Peer("192.0.2.1", 1))
    assert isinstance(refusal, Refusal) and refusal.reason == "address_outside_datacentre"
    view = await registry.show(DEMO_LOGIN)
    assert view.effective_status == "active" and view.subtype == "I"


async def test_a_registry_in_use_is_never_seeded(registry: LicenceRegistry, registry_db: Database) -> None:
    assert (await registry.import_datacentres(DATACENTRES)).applied
    before = await registry_dump(registry_db)
    assert await seed_demo_registry(registry) is False
    assert await registry_dump(registry_db) == before


async def test_two_processes_seeding_at_once_seed_once(registry: LicenceRegistry, registry_db: Database) -> None:
    other = LicenceRegistry(Database(registry_db.url.render_as_string(hide_password=False)), registry.pii,
                            clock=registry.clock)
    try:
        results = await asyncio.gather(seed_demo_registry(registry), seed_demo_registry(other))
    finally:
        await other.db.close()
    assert sorted(results) == [False, True]
    assert [v.dates.login for v in await registry.list_licences()] == [DEMO_LOGIN]


def test_one_migration_head_and_registry_revision_in_the_chain() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1
    registry_rev = scripts.get_revision("0002")
    assert registry_rev is not None and registry_rev.down_revision == "0001"


async def test_registry_tables_match_the_migration(registry_db: Database) -> None:
    ours = {m.__tablename__ for m in (Datacentre, DatacentreNetwork, Licence, LicenceEvent)}
    assert ours == set(REGISTRY_TABLES)

    def diff(sync_conn: Connection) -> list[Any]:
        return compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)
    async with registry_db.engine.connect() as conn:
        changes = await conn.run_sync(diff)

    def touches_ours(change: object) -> bool:
        text = repr(change)
        return any(f"'{t}'" in text or f"{t}." in text or f"<{t}>" in text for t in ours)
    assert [c for c in changes if touches_ours(c)] == []


async def test_downgrade_removes_only_the_registry(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/down.sqlite3")
    try:
        await db.upgrade()

        def down(sync_conn: Connection) -> None:
            cfg = alembic_config(db.url)
            cfg.attributes["connection"] = sync_conn
            command.downgrade(cfg, "0001")
        async with db.engine.begin() as conn:
            await conn.run_sync(down)
        async with db.engine.connect() as conn:
            names = set(await conn.run_sync(lambda c: c.dialect.get_table_names(c)))
        assert not names & set(REGISTRY_TABLES) and {"accounts", "shares"} <= names
        await db.upgrade()
        assert await db.current_revision() is not None
    finally:
        await db.close()
