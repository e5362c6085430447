"""The PII box: AES-GCM round trips bound to their field, tampering and wrong keys refused, a keyed
index, key loading from the environment, a file or the demo key, and no plain personal data in
the database file itself."""
from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select, update

from compliance.models import Licence
from compliance.pii import ENV_KEY, PiiBox, PiiDecryptError, PiiKeyError, load_pii_box, parse_key
from compliance.registry import LicenceRegistry, PiiKeyRefused
from pool.db import Database

from registry_fixtures import (ALICE_IIN, BOLAT_BIN, DANA_IIN, DATACENTRES, EVERY_PERSONAL_VALUE,  # noqa: F401
                               GOOD_LICENCES, PII_KEY, SettableClock, clock, licence_line, licences_csv, registry,
                               registry_db, registry_dump)


def test_round_trip_with_fresh_nonces() -> None:
    box = PiiBox(PII_KEY)
    a, b = box.encrypt(ALICE_IIN, "licences.iin_bin"), box.encrypt(ALICE_IIN, "licences.iin_bin")
    assert a != b and ALICE_IIN.encode() not in a
    assert box.decrypt(a, "licences.iin_bin") == box.decrypt(b, "licences.iin_bin") == ALICE_IIN
    assert box.decrypt(box.encrypt("Әлия Ержанқызы", "licences.name"), "licences.name") == "Әлия Ержанқызы"


def test_wrong_field_wrong_key_and_tampering_are_refused() -> None:
    box = PiiBox(PII_KEY)
    blob = box.encrypt(ALICE_IIN, "licences.iin_bin")
    with pytest.raises(PiiDecryptError):
        box.decrypt(blob, "licences.name")                   # a blob moved to another column
    with pytest.raises(PiiDecryptError):
        PiiBox(os.urandom(32)).decrypt(blob, "licences.iin_bin")
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(PiiDecryptError):
        box.decrypt(flipped, "licences.iin_bin")
    with pytest.raises(PiiDecryptError):
        box.decrypt(b"\x02" + blob[1:], "licences.iin_bin")


def test_index_is_keyed_and_deterministic() -> None:
    box, other = PiiBox(PII_KEY), PiiBox(os.urandom(32))
    assert box.index(ALICE_IIN) == PiiBox(PII_KEY).index(ALICE_IIN)
    assert box.index(ALICE_IIN) != other.index(ALICE_IIN)
    assert box.index(ALICE_IIN) != box.index(ALICE_IIN, kind="name")
    assert len(box.index(ALICE_IIN)) == 32
    assert PII_KEY.hex() not in repr(box) and "hidden" in repr(box)
    # The key id names a key without revealing it: stable, 8 bytes, different per key.
    assert box.key_id == PiiBox(PII_KEY).key_id != other.key_id and len(box.key_id) == 16
    assert box.key_id not in PII_KEY.hex()


@pytest.mark.parametrize("text", [PII_KEY, PII_KEY.hex().encode(), PII_KEY.hex().encode() + b"\n",
                                  base64.b64encode(PII_KEY)])
def test_key_formats(text: bytes) -> None:
    assert parse_key(text) == PII_KEY


def test_short_key_refused() -> None:
    with pytest.raises(PiiKeyError, match="32 bytes"):
        parse_key(b"00" * 16)


def test_key_sources(tmp_path: Path) -> None:
    key_file = tmp_path / "pii.key"
    key_file.write_text(PII_KEY.hex())
    key_file.chmod(0o600)
    from_file = load_pii_box(str(key_file), environ={})
    from_env = load_pii_box("", environ={ENV_KEY: PII_KEY.hex()})
    assert from_file.index("x") == from_env.index("x") == PiiBox(PII_KEY).index("x")
    other = os.urandom(32)
    assert load_pii_box(str(key_file), environ={ENV_KEY: other.hex()}).index("x") == PiiBox(other).index("x")
    with pytest.raises(PiiKeyError, match="KZPOOL_PII_KEY"):
        load_pii_box("", environ={})                                    # production: no key, no start
    with pytest.raises(PiiKeyError, match="missing.key"):
        load_pii_box(str(tmp_path / "missing.key"), environ={})


def test_demo_key_is_created_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "var" / "pii-demo.key"
    first = load_pii_box("", environ={}, allow_demo_key=True, demo_key_path=str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_pii_box("", environ={}, allow_demo_key=True, demo_key_path=str(path))
    assert first.index("x") == again.index("x")


async def test_database_file_holds_no_plain_personal_data(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/registry.sqlite3"
    db = Database(url)
    try:
        await db.upgrade()
        registry = LicenceRegistry(db, PiiBox(PII_KEY), clock=SettableClock())
        assert (await registry.import_datacentres(DATACENTRES)).applied
        assert (await registry.import_licences(GOOD_LICENCES)).applied
    finally:
        await db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("registry.sqlite3"))
    assert b"KZ-DM-0001" in raw                        # the file is readable: the check can find text
    for value in EVERY_PERSONAL_VALUE:
        assert value.encode() not in raw, value


# ---- key rotation (both backends) ---------------------------------------------------------------

NEW_KEY = bytes(range(100, 132))


def key_texts(*keys: bytes) -> list[str]:
    """Every way a key could show up in text: hex (both cases) and base64."""
    return [t for k in keys for t in (k.hex(), k.hex().upper(), base64.b64encode(k).decode())]


@pytest.fixture
async def seeded(registry: LicenceRegistry) -> LicenceRegistry:
    assert (await registry.import_datacentres(DATACENTRES)).applied
    assert (await registry.import_licences(GOOD_LICENCES)).applied
    return registry


def handle(registry_db: Database, key: bytes) -> LicenceRegistry:
    """Another process's registry, with its own key."""
    return LicenceRegistry(Database(registry_db.url.render_as_string(hide_password=False)), PiiBox(key),
                           clock=SettableClock())


async def test_rotation_re_encrypts_everything_for_the_new_key(seeded: LicenceRegistry, registry_db: Database,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    records: list[tuple[str, dict]] = []
    seeded.audit = lambda kind, payload: records.append((kind, payload))
    old_id, new_id = PiiBox(PII_KEY).key_id, PiiBox(NEW_KEY).key_id
    before = await registry_dump(registry_db)

    rotation = await seeded.rotate_pii_key(PiiBox(NEW_KEY), operator="aigerim")
    assert (rotation.old_key_id, rotation.new_key_id, rotation.datacentres, rotation.licences) == \
        (old_id, new_id, 2, 3)
    after = await registry_dump(registry_db)
    # Only the encrypted columns and their indexes changed; every one of them did.
    for table in ("datacentre_networks", "licence_events"):
        assert after[table] == before[table]
    assert len(after["licences"]) == 3 and all(a != b for a, b in zip(after["licences"], before["licences"]))

    new, old = handle(registry_db, NEW_KEY), handle(registry_db, PII_KEY)
    try:
        assert await new.logins_for_iin_bin(BOLAT_BIN) == ["bolat"]
        shown = await new.show("alice", reveal=True)
        assert (shown.iin_bin, shown.name) == (ALICE_IIN, "Alice Ivanova IE")
        assert (await new.check_pii()).ok
        assert await old.logins_for_iin_bin(BOLAT_BIN) == []       # the old index key finds nothing
        with pytest.raises(PiiDecryptError):
            await old.show("alice")
        check = await old.check_pii()
        assert not check.ok and len(check.bad) == 2 + 3 * 2
        # A process still on the old key cannot write: its blobs would be unreadable.
        with pytest.raises(PiiKeyRefused) as refused:
            await old.import_licences(licences_csv(licence_line("dana", DANA_IIN, "Dana Seitova IE", "KZ-DM-0004")))
        assert refused.value.code == "pii_key_mismatch"
        assert await registry_dump(registry_db) == after
        # The registry that rotated works on with the new key.
        assert (await seeded.show("bolat", reveal=True)).iin_bin == BOLAT_BIN
    finally:
        await new.db.close()
        await old.db.close()

    assert records == [("pii_key_rotation", {
        "action": "rotated", "subject": "pii_key", "old_key_id": old_id, "new_key_id": new_id,
        "datacentres": 2, "licences": 3,
        "fields": ["datacentres.owner_iin_bin", "licences.iin_bin", "licences.name"], "operator": "aigerim"})]
    seen = json.dumps(records) + "\n".join(r.getMessage() for r in caplog.records)
    assert not [k for k in key_texts(PII_KEY, NEW_KEY) if k in seen]
    assert not [v for v in EVERY_PERSONAL_VALUE if v in seen]


async def test_a_key_that_cannot_open_every_row_is_refused_and_nothing_changes(
        seeded: LicenceRegistry, registry_db: Database) -> None:
    wrong = handle(registry_db, os.urandom(32))
    before = await registry_dump(registry_db)
    try:
        with pytest.raises(PiiKeyRefused) as refused:
            await wrong.rotate_pii_key(PiiBox(NEW_KEY))
    finally:
        await wrong.db.close()
    assert refused.value.code == "pii_undecryptable"
    async with registry_db.engine.connect() as conn:
        alice_id = (await conn.execute(select(Licence.id).where(Licence.login == "alice"))).scalar_one()
    assert "datacentres id dc-ala" in str(refused.value)
    assert f"licences id {alice_id}: licences.iin_bin" in str(refused.value)
    assert await registry_dump(registry_db) == before

    # One row sealed with another key: named by its id, never by its content.
    async with registry_db.engine.begin() as conn:
        await conn.execute(update(Licence).where(Licence.login == "caspian").values(
            name_enc=PiiBox(os.urandom(32)).encrypt("Caspian Hash JSC", "licences.name")))
        caspian_id = (await conn.execute(select(Licence.id).where(Licence.login == "caspian"))).scalar_one()
    before = await registry_dump(registry_db)
    with pytest.raises(PiiKeyRefused) as refused:
        await seeded.rotate_pii_key(PiiBox(NEW_KEY))
    message = str(refused.value)
    assert message.startswith("pii_undecryptable: 1 field(s)")
    assert f"licences id {caspian_id}: licences.name does not decrypt" in message
    assert not [v for v in EVERY_PERSONAL_VALUE if v in message]
    assert await registry_dump(registry_db) == before
    with pytest.raises(PiiKeyRefused, match="pii_key_unchanged"):
        await seeded.rotate_pii_key(PiiBox(PII_KEY))


class FailingBox(PiiBox):
    """A new key whose encryption breaks down after `after` fields: a crash in the middle."""

    def __init__(self, key: bytes, after: int) -> None:
        super().__init__(key)
        self.left = after

    def encrypt(self, plain: str, field: str) -> bytes:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("interrupted")
        return super().encrypt(plain, field)


@pytest.mark.parametrize("after", [0, 3])
async def test_an_interrupted_rotation_leaves_the_old_state(seeded: LicenceRegistry, registry_db: Database,
                                                            after: int) -> None:
    records: list[tuple[str, dict]] = []
    seeded.audit = lambda kind, payload: records.append((kind, payload))
    before = await registry_dump(registry_db)
    with pytest.raises(RuntimeError, match="interrupted"):
        await seeded.rotate_pii_key(FailingBox(NEW_KEY, after))
    assert await registry_dump(registry_db) == before and records == []
    assert seeded.pii.key_id == PiiBox(PII_KEY).key_id
    assert await seeded.logins_for_iin_bin(BOLAT_BIN) == ["bolat"] and (await seeded.check_pii()).ok
