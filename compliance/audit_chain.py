"""The audit log's hash chain: the exact bytes that are hashed and signed.

This module is the specification an independent verifier re-implements (docs/auditor-guide.md,
"The rules"); it has no I/O, so the pool, the exporter and the verifier share one definition.

Canonical JSON (C-JSON): UTF-8 JSON with no whitespace, object keys sorted by Unicode code point,
every character outside printable ASCII (0x20-0x7E) escaped: `\\"`, `\\\\`, `\\b`, `\\f`, `\\n`,
`\\r`, `\\t`, anything else as `\\u` + 4 lowercase hex digits (UTF-16 surrogate pairs above
U+FFFF); `/` is not escaped. Values are objects, arrays, strings, true, false, null and integers
within +-(2^53 - 1). So that no verifier has to agree on float formatting, a payload never holds a
fraction: `normalise_payload` turns floats (and integers beyond 2^53 - 1) into decimal strings
before the record is written.

Record hash: SHA-256 over the C-JSON of {"kind", "payload", "prev_hash", "seq", "time"}, written as
64 lowercase hex digits. `seq` counts from 1 without gaps; `prev_hash` of record 1 is 64 zeros;
`time` is UTC as "YYYY-MM-DDTHH:MM:SS.ffffffZ".

Checkpoint: a record of kind "checkpoint" whose payload is {"key_id", "signature", "signed_hash",
"signed_seq"}: an Ed25519 (RFC 8032) signature, 128 hex digits, over the ASCII C-JSON of
{"domain": "kzpool-audit-checkpoint-v1", "hash": <hash of record signed_seq>, "seq": signed_seq},
where signed_seq is always the record just before the checkpoint. The checkpoint is itself chained,
so the next checkpoint covers it as well.
"""
from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from typing import Any

GENESIS_HASH = "0" * 64
CHECKPOINT_KIND = "checkpoint"
CHECKPOINT_DOMAIN = "kzpool-audit-checkpoint-v1"
MAX_SAFE_INTEGER = 2**53 - 1          # the largest integer every JSON reader keeps exactly
MAX_KIND_LENGTH = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The coinbase anchor: magic, 4-byte big-endian seq, the first 9 bytes of that record's hash.
# 16 bytes (17 with its push opcode) of the 100-byte scriptSig; 72 hash bits make a matching
# forgery a 2^72 search, and ASIC miners only compute block-header hashes.
ANCHOR_MAGIC = b"kza"
ANCHOR_HASH_BYTES = 9
ANCHOR_SIZE = len(ANCHOR_MAGIC) + 4 + ANCHOR_HASH_BYTES


def canonical_json(value: Any) -> str:
    """C-JSON of `value` (see the module docstring). Raises ValueError on NaN or infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def normalise_payload(value: Any) -> Any:
    """`value` as C-JSON-safe data: floats and huge integers become decimal strings, tuples lists,
    enums their value, datetimes UTC strings, bytes hex, paths strings. Anything else is a
    programming error and raises TypeError at the caller, not later in the writer."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit payload keys must be strings, got {key!r}")
            out[key] = normalise_payload(item)
        return out
    if isinstance(value, (list, tuple)):
        return [normalise_payload(item) for item in value]
    if isinstance(value, enum.Enum):
        return normalise_payload(value.value)
    if isinstance(value, datetime):
        return format_time(time_us_of(value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"audit payload value of type {type(value).__name__} is not recordable")


def time_us_of(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware (UTC)")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def format_time(time_us: int) -> str:
    """Integer microseconds since the Unix epoch as the record's UTC time string."""
    return (_EPOCH + timedelta(microseconds=time_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int           # 0 before the first record
    hash: str          # hex; GENESIS_HASH before the first record


GENESIS = ChainHead(0, GENESIS_HASH)


@dataclass(frozen=True, slots=True)
class ChainRecord:
    seq: int
    time: str            # format_time()
    kind: str
    payload_json: str    # the payload's C-JSON, exactly as hashed and stored
    prev_hash: str
    hash: str

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.seq, self.hash)

    def export_line(self) -> str:
        """One line of an export: the record's C-JSON, hash included."""
        return (f'{{"hash":{_json_string(self.hash)},"kind":{_json_string(self.kind)},'
                f'"payload":{self.payload_json},"prev_hash":{_json_string(self.prev_hash)},'
                f'"seq":{self.seq},"time":{_json_string(self.time)}}}')


def _json_string(text: str) -> str:
    """C-JSON of a string; the common case (printable ASCII without quote or backslash, as every
    hash, time and kind the pool writes) needs no escaping and no json.dumps."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return canonical_json(text)


def record_preimage(seq: int, time: str, kind: str, payload_json: str, prev_hash: str) -> bytes:
    """The bytes a record's hash covers: C-JSON of {"kind","payload","prev_hash","seq","time"}.
    Built by concatenation because payload_json is already canonical (no re-parse per record)."""
    return (f'{{"kind":{_json_string(kind)},"payload":{payload_json},'
            f'"prev_hash":{_json_string(prev_hash)},"seq":{seq},'
            f'"time":{_json_string(time)}}}').encode("ascii")


def record_hash(seq: int, time: str, kind: str, payload_json: str, prev_hash: str) -> str:
    return hashlib.sha256(record_preimage(seq, time, kind, payload_json, prev_hash)).hexdigest()


def chain_next(head: ChainHead, time_us: int, kind: str, payload_json: str) -> ChainRecord:
    """The record that extends `head`."""
    seq, time = head.seq + 1, format_time(time_us)
    return ChainRecord(seq, time, kind, payload_json, head.hash,
                       record_hash(seq, time, kind, payload_json, head.hash))


def checkpoint_message(signed_seq: int, signed_hash: str) -> bytes:
    return canonical_json({"domain": CHECKPOINT_DOMAIN, "hash": signed_hash,
                           "seq": signed_seq}).encode("ascii")


def checkpoint_payload(signed: ChainHead, key_id: str, signature: bytes) -> str:
    return canonical_json({"key_id": key_id, "signature": signature.hex(),
                           "signed_hash": signed.hash, "signed_seq": signed.seq})


def anchor_tag(head: ChainHead) -> bytes:
    """The coinbase tag committing to `head` (empty before the first record). seq is taken modulo
    2^32; the hash prefix tells records 2^32 apart."""
    if head.seq == 0:
        return b""
    return (ANCHOR_MAGIC + struct.pack(">I", head.seq & 0xFFFFFFFF)
            + bytes.fromhex(head.hash)[:ANCHOR_HASH_BYTES])


def find_anchors(script_sig: bytes) -> list[tuple[int, bytes]]:
    """Every (seq mod 2^32, hash prefix) anchored in a coinbase scriptSig: a 16-byte direct push
    (opcode 0x10) starting with the magic."""
    found, marker, start = [], bytes([ANCHOR_SIZE]) + ANCHOR_MAGIC, 0
    while (at := script_sig.find(marker, start)) >= 0:
        body = script_sig[at + 1:at + 1 + ANCHOR_SIZE]
        if len(body) == ANCHOR_SIZE:
            seq = struct.unpack(">I", body[len(ANCHOR_MAGIC):len(ANCHOR_MAGIC) + 4])[0]
            found.append((seq, body[len(ANCHOR_MAGIC) + 4:]))
        start = at + 1
    return found
