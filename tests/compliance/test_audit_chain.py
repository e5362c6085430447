"""The chain's byte-level rules (what docs/auditor-guide.md tells an independent verifier), the
coinbase anchor, and the Ed25519 key file."""
from __future__ import annotations

import enum
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.audit_chain import (ANCHOR_SIZE, GENESIS, ChainHead, anchor_tag, canonical_json,
                                    chain_next, checkpoint_message, find_anchors,
                                    normalise_payload, record_hash, record_preimage)
from compliance.audit_keys import (AuditKeyError, AuditKeyMissing, generate_key_file,
                                   load_or_create_signing_key, load_signing_key, parse_public_key)
from compliance.audit_export import parse_export_line
from pool.coinbase import MAX_SCRIPT_SIG_SIZE, build_script_sig

# The worked example of docs/auditor-guide.md: keep the two in step.
GUIDE_PAYLOAD = {"mode": "production", "pool": "Qazaq Hash \u049a"}
GUIDE_TIME_US = 1_767_225_600_000_000
GUIDE_HASH = "7cc8bb406b8533beac274e3b9fea98f9a3cba302e618165c4981e2593f6f8350"
GUIDE_PREIMAGE = ('{"kind":"pool_start","payload":{"mode":"production","pool":"Qazaq Hash \\u049a"},'
                  '"prev_hash":"' + "0" * 64 + '","seq":1,"time":"2026-01-01T00:00:00.000000Z"}')

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def test_the_guide_example() -> None:
    record = chain_next(GENESIS, GUIDE_TIME_US, "pool_start", canonical_json(GUIDE_PAYLOAD))
    preimage = record_preimage(record.seq, record.time, record.kind, record.payload_json,
                               record.prev_hash)
    assert preimage.decode() == GUIDE_PREIMAGE
    assert record.hash == hashlib.sha256(GUIDE_PREIMAGE.encode()).hexdigest() == GUIDE_HASH
    assert record.time == "2026-01-01T00:00:00.000000Z"


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
       kind=st.text(min_size=1, max_size=20), seq=st.integers(1, 2**40),
       time_us=st.integers(0, 4_102_444_800_000_000))
def test_preimage_is_the_canonical_json_of_the_record(payload: dict, kind: str, seq: int,
                                                      time_us: int) -> None:
    head = ChainHead(seq - 1, hashlib.sha256(str(seq).encode()).hexdigest())
    record = chain_next(head, time_us, kind, canonical_json(payload))
    expected = canonical_json({"seq": seq, "time": record.time, "kind": kind, "payload": payload,
                               "prev_hash": head.hash})
    assert record_preimage(seq, record.time, kind, record.payload_json, head.hash) == expected.encode()
    assert record_hash(seq, record.time, kind, record.payload_json, head.hash) == record.hash
    # An export line parses back to the same record, whatever the payload holds.
    assert parse_export_line(record.export_line()) == record


def test_canonical_json_escapes_everything_outside_printable_ascii() -> None:
    text = canonical_json({"b": "é\n\t\"\\/\x7f😀", "a": [1, True, None]})
    assert text == '{"a":[1,true,null],"b":"\\u00e9\\n\\t\\"\\\\/\\u007f\\ud83d\\ude00"}'
    assert text.isascii()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


class Colour(enum.Enum):
    RED = "red"


def test_normalise_payload_never_lets_a_fraction_through() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    out = normalise_payload({"f": 0.1, "i": 2**53, "j": -5, "b": True, "t": (1, 2), "e": Colour.RED,
                             "d": moment, "x": b"\x01\xff", "p": Path("/var/k"), "n": float("inf")})
    assert out == {"f": "0.1", "i": "9007199254740992", "j": -5, "b": True, "t": [1, 2],
                   "e": "red", "d": "2026-01-02T03:04:05.000006Z", "x": "01ff", "p": "/var/k",
                   "n": "inf"}
    assert "." not in canonical_json({k: v for k, v in out.items() if k not in ("f", "d")})
    with pytest.raises(TypeError):
        normalise_payload({"o": object()})
    with pytest.raises(TypeError):
        normalise_payload({1: "non-string key"})


def test_anchor_tag_fits_the_coinbase_and_is_found_again() -> None:
    head = ChainHead(0x1_0000_0005, "ab" * 32)
    tag = anchor_tag(head)
    assert len(tag) == ANCHOR_SIZE == 16 and tag.startswith(b"kza")
    assert anchor_tag(GENESIS) == b""
    # The largest extranonce the config allows and a far-future height still leave room.
    layout = build_script_sig(10_000_000, 8 + 16, tag=b"/kzpool/", extra_push=tag)
    assert layout.size <= MAX_SCRIPT_SIG_SIZE and layout.tag_used == b"/kzpool/"
    script_sig = layout.before_extranonce + bytes(24) + layout.after_extranonce
    assert find_anchors(script_sig) == [(5, bytes.fromhex("ab" * 9))]
    assert find_anchors(b"\x03kza" + bytes(20)) == []


def test_checkpoint_message_is_canonical_json_with_its_domain() -> None:
    assert json.loads(checkpoint_message(7, "cd" * 32)) == {
        "domain": "kzpool-audit-checkpoint-v1", "hash": "cd" * 32, "seq": 7}


# -- the key file ---------------------------------------------------------------------------

def test_keygen_writes_an_owner_only_file_and_never_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "var" / "audit-ed25519.pem"
    old_umask = os.umask(0)    # the mode must not depend on the operator's umask
    try:
        key = generate_key_file(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(AuditKeyError, match="refusing to replace"):
        generate_key_file(path)
    loaded = load_signing_key(path)
    assert loaded.public == key.public and len(key.public.raw) == 32
    assert "PRIVATE" not in repr(loaded) and key.key_id in repr(loaded)
    message = checkpoint_message(1, "00" * 32)
    assert key.public.verify(message, loaded.sign(message))
    assert not key.public.verify(message + b"x", loaded.sign(message))


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    generate_key_file(path)
    path.chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        load_signing_key(path)


def test_missing_key_created_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "var" / "k.pem"
    with pytest.raises(AuditKeyMissing, match="kzpool audit keygen"):
        load_or_create_signing_key(path, create_if_missing=False)
    created = load_or_create_signing_key(path, create_if_missing=True)
    assert load_or_create_signing_key(path, create_if_missing=False).public == created.public


def test_public_key_as_hex_pem_or_file(tmp_path: Path) -> None:
    key = generate_key_file(tmp_path / "k.pem")
    pem_file = tmp_path / "pub.pem"
    pem_file.write_text(key.public.pem)
    for given_as in (key.public.hex, key.public.hex.upper(), key.public.pem, str(pem_file),
                     str(tmp_path / "k.pem")):
        assert parse_public_key(given_as) == key.public
    for junk in ("zz" * 32, "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"):
        with pytest.raises(AuditKeyError):
            parse_public_key(junk)
