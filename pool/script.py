"""Serialisation primitives: CompactSize varints, script pushes, and the BIP34 height push.

The BIP34 rule is Core's `CScript() << height` (STRATUM-SPEC §3.2, §4.5): 0 is OP_0, 1..16 are the single
opcodes OP_1..OP_16, anything else a minimal little-endian CScriptNum push with a sign byte when the top
bit of the magnitude is set. BIP34's own prose ("first byte is number of bytes") is wrong for 1..16.
"""
from __future__ import annotations

import struct

OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_16 = 0x60
OP_RETURN = 0x6A

MAX_COMPACT_SIZE = 0xFFFFFFFFFFFFFFFF


class DecodeError(ValueError):
    """Bytes that do not parse: truncated, non-canonical, or trailing data."""


def encode_varint(n: int) -> bytes:
    """Bitcoin's CompactSize: 1, 3, 5 or 9 bytes."""
    if n < 0 or n > MAX_COMPACT_SIZE:
        raise ValueError(f"varint out of range: {n}")
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """(value, offset after it). Non-canonical encodings are refused, as Core's ReadCompactSize does."""
    if offset >= len(data):
        raise DecodeError("varint: no data")
    first = data[offset]
    if first < 0xFD:
        return first, offset + 1
    width, floor = {0xFD: (2, 0xFD), 0xFE: (4, 0x10000), 0xFF: (8, 0x100000000)}[first]
    end = offset + 1 + width
    if end > len(data):
        raise DecodeError("varint: truncated")
    value = int.from_bytes(data[offset + 1:end], "little")
    if value < floor:
        raise DecodeError(f"varint: non-canonical encoding of {value}")
    return value, end


def push_data(data: bytes) -> bytes:
    """The smallest push opcode + data for `data`, as `CScript() << vector` writes it.

    Single bytes 1..16 stay direct pushes (not OP_N): this is data, not a number.
    """
    n = len(data)
    if n == 0:
        return bytes((OP_0,))
    if n < OP_PUSHDATA1:
        return bytes((n,)) + data
    if n <= 0xFF:
        return bytes((OP_PUSHDATA1, n)) + data
    if n <= 0xFFFF:
        return bytes((OP_PUSHDATA2,)) + struct.pack("<H", n) + data
    return bytes((OP_PUSHDATA4,)) + struct.pack("<I", n) + data


def push_data_overhead(size: int) -> int:
    """Bytes of opcode a push of `size` bytes costs (for scriptSig budgeting)."""
    if size < OP_PUSHDATA1:
        return 1
    if size <= 0xFF:
        return 2
    return 3 if size <= 0xFFFF else 5


def script_num(n: int) -> bytes:
    """CScriptNum serialisation: minimal little-endian magnitude, sign in the top bit of the last byte."""
    if n == 0:
        return b""
    magnitude = abs(n)
    out = bytearray()
    while magnitude:
        out.append(magnitude & 0xFF)
        magnitude >>= 8
    # The top bit is the sign: a magnitude that uses it needs one more byte to carry the sign.
    if out[-1] & 0x80:
        out.append(0x80 if n < 0 else 0x00)
    elif n < 0:
        out[-1] |= 0x80
    return bytes(out)


def decode_script_num(data: bytes) -> int:
    """Inverse of `script_num` (accepts non-minimal encodings; callers compare bytes for minimality)."""
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def push_int(n: int) -> bytes:
    """Core's `CScript::push_int64`: OP_1NEGATE, OP_0, OP_1..OP_16, or a minimal CScriptNum push."""
    if n == -1:
        return bytes((OP_1NEGATE,))
    if n == 0:
        return bytes((OP_0,))
    if 1 <= n <= 16:
        return bytes((OP_1 + n - 1,))
    return push_data(script_num(n))


def bip34_height_push(height: int) -> bytes:
    """The exact bytes a coinbase scriptSig must start with at `height` (BIP34 as Core enforces it)."""
    if height < 0:
        raise ValueError(f"block height cannot be negative: {height}")
    return push_int(height)
