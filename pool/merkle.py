"""Merkle trees over txids and wtxids, the coinbase branch, and the BIP141 witness commitment.

All hashes are internal-order bytes. The coinbase is leaf 0 of both trees; in the witness tree its
wtxid is defined as 32 zero bytes, so the commitment never depends on the coinbase (STRATUM-SPEC §3.3).
"""
from __future__ import annotations

from typing import Sequence

from .hashing import dsha256

ZERO_HASH = bytes(32)
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")
# OP_RETURN, push 36 bytes: the 4-byte header and the 32-byte commitment.
WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24") + WITNESS_COMMITMENT_HEADER
WITNESS_COMMITMENT_SCRIPT_SIZE = 38


def _next_level(level: list[bytes]) -> list[bytes]:
    # An odd level pairs its last node with itself (the CVE-2012-2459 quirk every client reproduces).
    if len(level) % 2:
        level = level + [level[-1]]
    return [dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """The merkle root of a full leaf list (coinbase included)."""
    if not hashes:
        raise ValueError("a merkle tree needs at least one leaf")
    level = list(hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_branch(txids: Sequence[bytes]) -> list[bytes]:
    """The siblings of leaf 0 from bottom to top, given the NON-coinbase txids in block order.

    STRATUM-SPEC §3.4: leaf 0 is a placeholder for the coinbase; at each level the branch takes
    level[1], then the level is hashed pairwise. Hashes involving the placeholder are never emitted, so
    its value does not matter. No transactions: empty branch.
    """
    branch: list[bytes] = []
    level = [ZERO_HASH, *txids]
    while len(level) > 1:
        branch.append(level[1])
        level = _next_level(level)
    return branch


def witness_merkle_root(wtxids: Sequence[bytes]) -> bytes:
    """The witness tree root over the NON-coinbase wtxids (the coinbase's is taken as zero)."""
    return merkle_root([ZERO_HASH, *wtxids])


def witness_commitment(witness_root: bytes, reserved_value: bytes = ZERO_HASH) -> bytes:
    """dSHA256(witness_root || witness_reserved_value), the 32 bytes the coinbase commits to."""
    return dsha256(witness_root + reserved_value)


def witness_commitment_script(commitment: bytes) -> bytes:
    """The commitment output's scriptPubKey, same shape as GBT's `default_witness_commitment`."""
    if len(commitment) != 32:
        raise ValueError("a witness commitment is 32 bytes")
    return WITNESS_COMMITMENT_PREFIX + commitment


def witness_commitment_script_for(wtxids: Sequence[bytes], reserved_value: bytes = ZERO_HASH) -> bytes:
    """The commitment script for a set of non-coinbase wtxids (used when GBT sent none)."""
    return witness_commitment_script(witness_commitment(witness_merkle_root(wtxids), reserved_value))


def find_witness_commitment(output_scripts: Sequence[bytes]) -> int | None:
    """Index of the coinbase output carrying the commitment; BIP141 says the highest matching one counts."""
    for index in range(len(output_scripts) - 1, -1, -1):
        script = output_scripts[index]
        if len(script) >= WITNESS_COMMITMENT_SCRIPT_SIZE and script.startswith(WITNESS_COMMITMENT_PREFIX):
            return index
    return None
