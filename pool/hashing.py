"""SHA-256d, the merkle fold along a branch, and the 80-byte block header.

The reference hashing path (DESIGN.md: "hashlib is the reference hashing path; the C extension must agree
with it bit for bit"). Every hash here is internal-order bytes, exactly as it stands in a header or as
hashlib returns it; display hex is `h[::-1].hex()` at the edges (STRATUM-SPEC §7).
"""
from __future__ import annotations

import struct
from hashlib import sha256
from typing import Iterable

HEADER_SIZE = 80

# "<I32s32sIII": the header's six fields, integers little-endian (STRATUM-SPEC §2.2).
_HEADER = struct.Struct("<I32s32sIII")


def dsha256(data: bytes) -> bytes:
    """SHA-256 of SHA-256: the hash of headers, transactions and merkle nodes."""
    return sha256(sha256(data).digest()).digest()


def merkle_root_from_branch(coinbase_hash: bytes, branch: Iterable[bytes]) -> bytes:
    """Fold the coinbase txid up a merkle branch; the coinbase is leaf 0, so it is always on the left."""
    node = coinbase_hash
    for sibling in branch:
        node = sha256(sha256(node + sibling).digest()).digest()
    return node


def build_header(version: int, prevhash: bytes, merkle_root: bytes, ntime: int, nbits: int,
                 nonce: int) -> bytes:
    """The 80-byte header; prevhash and merkle_root are internal-order bytes (not display hex)."""
    if len(prevhash) != 32 or len(merkle_root) != 32:
        raise ValueError("prevhash and merkle_root must be 32 bytes each")
    # Masking keeps a miner's out-of-range field from raising struct.error deep in the share path;
    # the callers bound-check what they accept from the wire.
    return _HEADER.pack(version & 0xFFFFFFFF, prevhash, merkle_root, ntime & 0xFFFFFFFF,
                        nbits & 0xFFFFFFFF, nonce & 0xFFFFFFFF)


def hash_to_int(digest: bytes) -> int:
    """A hash as the 256-bit number PoW compares: little-endian, equal to int(display_hex, 16)."""
    return int.from_bytes(digest, "little")
