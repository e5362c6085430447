"""The coinbase transaction, split around the extranonce for `mining.notify` (STRATUM-SPEC §3.2, §3.3).

scriptSig layout:
    BIP34 height push | coinbaseaux bytes | pool tag push | push(extranonce1 + extranonce2) | extra push
One push opcode covers both extranonces, so coinb1 ends with that opcode and coinb2 starts right after
extranonce2. The `extra_push` slot is reserved space a caller fills (the audit-log anchor); it counts
against the 100-byte scriptSig limit before the tag does, and the tag is what gets cut when over budget.

coinb1/coinb2 are cut from the LEGACY serialisation because that is what the miner hashes into the txid.
A block carrying a witness commitment must instead contain the BIP144 serialisation, whose coinbase
witness is one 32-byte item (the reserved value, zeros); `CoinbaseParts.for_block` builds it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .merkle import WITNESS_COMMITMENT_PREFIX, WITNESS_COMMITMENT_SCRIPT_SIZE, ZERO_HASH, \
    witness_commitment_script_for
from .script import bip34_height_push, encode_varint, push_data, push_data_overhead
from .template import BlockTemplate
from .txparse import NULL_INDEX, NULL_TXID, TxOut

MIN_SCRIPT_SIG_SIZE = 2       # consensus: bad-cb-length below
MAX_SCRIPT_SIG_SIZE = 100     # consensus: bad-cb-length above
COINBASE_TX_VERSION = 2       # what Core's own miner writes; consensus accepts any
# The coinbase witness when committing: 1 stack item of 32 bytes, the witness reserved value (zeros).
COINBASE_WITNESS = b"\x01\x20" + ZERO_HASH


class CoinbaseError(ValueError):
    """A coinbase that consensus would refuse (scriptSig size, outputs) or a bad argument for one."""


@dataclass(frozen=True, slots=True)
class ScriptSigLayout:
    """The scriptSig as the bytes before the extranonce (ending in its push opcode) and after it."""
    before_extranonce: bytes
    after_extranonce: bytes
    extranonce_size: int
    tag_used: bytes            # the tag as actually written (possibly truncated, possibly empty)

    @property
    def size(self) -> int:
        return len(self.before_extranonce) + self.extranonce_size + len(self.after_extranonce)


def _fit_tag(tag: bytes, budget: int) -> bytes:
    """The longest prefix of `tag` whose push fits in `budget` bytes (empty if not even one byte fits)."""
    n = len(tag)
    while n and push_data_overhead(n) + n > budget:
        n -= 1
    return tag[:n]


def build_script_sig(height: int, extranonce_size: int, *, coinbaseaux: bytes = b"", tag: bytes = b"",
                     extra_push: bytes = b"", truncate_tag: bool = True) -> ScriptSigLayout:
    """Lay out the coinbase scriptSig; CoinbaseError when the fixed parts alone exceed 100 bytes."""
    if extranonce_size < 0:
        raise CoinbaseError("extranonce size cannot be negative")
    height_push = bip34_height_push(height)
    # push_data of n placeholder bytes minus those bytes leaves exactly the opcode(s) for an n-byte push.
    extranonce_opcode = push_data(bytes(extranonce_size))[:push_data_overhead(extranonce_size)]
    extra = push_data(extra_push) if extra_push else b""
    fixed = len(height_push) + len(coinbaseaux) + len(extranonce_opcode) + extranonce_size + len(extra)
    if fixed > MAX_SCRIPT_SIG_SIZE:
        raise CoinbaseError(f"coinbase scriptSig needs {fixed} bytes without the tag; the limit is "
                            f"{MAX_SCRIPT_SIG_SIZE} (height push, coinbaseaux, extranonce and extra push)")
    tag_used = _fit_tag(tag, MAX_SCRIPT_SIG_SIZE - fixed)
    if tag_used != tag and not truncate_tag:
        raise CoinbaseError(f"pool tag of {len(tag)} bytes does not fit: {MAX_SCRIPT_SIG_SIZE - fixed} "
                            "bytes of scriptSig are left")
    tag_push = push_data(tag_used) if tag_used else b""
    layout = ScriptSigLayout(height_push + coinbaseaux + tag_push + extranonce_opcode, extra,
                             extranonce_size, tag_used)
    if layout.size < MIN_SCRIPT_SIG_SIZE:      # unreachable: height push and extranonce opcode are 2
        raise CoinbaseError(f"coinbase scriptSig of {layout.size} bytes is below {MIN_SCRIPT_SIG_SIZE}")
    return layout


def witness_commitment_for(template: BlockTemplate) -> bytes | None:
    """The commitment output script: GBT's when given, computed when a tx has witness, else None."""
    given = template.default_witness_commitment
    if given is not None:
        if len(given) < WITNESS_COMMITMENT_SCRIPT_SIZE or not given.startswith(WITNESS_COMMITMENT_PREFIX):
            raise CoinbaseError(f"default_witness_commitment is not a commitment script: {given.hex()}")
        return given
    if any(tx.has_witness for tx in template.transactions):
        return witness_commitment_script_for([tx.wtxid for tx in template.transactions])
    return None


def coinbase_witness_serialization(legacy: bytes) -> bytes:
    """BIP144 form of a legacy-serialised coinbase: marker+flag after the version, witness before locktime."""
    return legacy[:4] + b"\x00\x01" + legacy[4:-4] + COINBASE_WITNESS + legacy[-4:]


@dataclass(frozen=True, slots=True)
class CoinbaseParts:
    coinb1: bytes
    coinb2: bytes
    extranonce_size: int                     # extranonce1 + extranonce2 bytes between coinb1 and coinb2
    witness_commitment: bytes | None         # the commitment output script, when the coinbase has one
    script_sig: ScriptSigLayout

    def legacy(self, extranonce: bytes) -> bytes:
        """The coinbase as the miner hashes it (txid form)."""
        if len(extranonce) != self.extranonce_size:
            raise CoinbaseError(f"extranonce must be {self.extranonce_size} bytes, got {len(extranonce)}")
        return self.coinb1 + extranonce + self.coinb2

    def for_block(self, extranonce: bytes) -> bytes:
        """The coinbase as it goes into the block: BIP144 form exactly when it commits to witnesses."""
        legacy = self.legacy(extranonce)
        return coinbase_witness_serialization(legacy) if self.witness_commitment else legacy


def build_coinbase(height: int, coinbasevalue: int, payout_script: bytes, extranonce_size: int, *,
                   coinbaseaux: bytes = b"", tag: bytes = b"", extra_push: bytes = b"",
                   witness_commitment: bytes | None = None, truncate_tag: bool = True,
                   tx_version: int = COINBASE_TX_VERSION, sequence: int = 0xFFFFFFFF) -> CoinbaseParts:
    """The whole coinbase: one payout output worth `coinbasevalue`, then the commitment output if any."""
    if not payout_script:
        raise CoinbaseError("payout script is empty: the reward would be anyone-can-spend")
    if coinbasevalue < 0:
        raise CoinbaseError(f"coinbasevalue cannot be negative: {coinbasevalue}")
    layout = build_script_sig(height, extranonce_size, coinbaseaux=coinbaseaux, tag=tag,
                              extra_push=extra_push, truncate_tag=truncate_tag)
    outputs = [TxOut(coinbasevalue, payout_script)]
    if witness_commitment is not None:
        outputs.append(TxOut(0, witness_commitment))
    head = (struct.pack("<I", tx_version) + b"\x01" + NULL_TXID + struct.pack("<I", NULL_INDEX)
            + encode_varint(layout.size) + layout.before_extranonce)
    tail = (layout.after_extranonce + struct.pack("<I", sequence)
            + encode_varint(len(outputs)) + b"".join(out.serialize() for out in outputs)
            + struct.pack("<I", 0))
    return CoinbaseParts(head, tail, extranonce_size, witness_commitment, layout)
