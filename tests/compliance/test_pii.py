"""The PII box: AES-GCM round trips bound to their field, tampering and wrong keys refused, a keyed
index, key loading from the environment, a file or the demo key, and no plain personal data in
the database file itself."""
from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from compliance.pii import ENV_KEY, PiiBox, PiiDecryptError, PiiKeyError, load_pii_box, parse_key
from compliance.registry import LicenceRegistry
from pool.db import Database

from registry_fixtures import (ALICE_IIN, DATACENTRES, EVERY_PERSONAL_VALUE, GOOD_LICENCES,  # noqa: F401
                               PII_KEY, SettableClock)


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
