"""Transactions and blocks as small plain types with serialize() / deserialize().

In the style of Bitcoin Core's Python test framework (STYLE.md): hashes are computed, never cached;
`deserialize` of a whole object insists every byte is consumed. Both serialisations are here: the legacy
one (txid, merkle tree, stratum coinbase) and the BIP144 one with marker, flag and witnesses.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .hashing import HEADER_SIZE, build_header, dsha256
from .script import DecodeError, decode_varint, encode_varint

NULL_TXID = bytes(32)
NULL_INDEX = 0xFFFFFFFF


class _Reader:
    """A cursor over bytes that raises DecodeError instead of slicing short."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if n < 0 or end > len(self.data):
            raise DecodeError(f"truncated: wanted {n} bytes at offset {self.offset}")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def i64(self) -> int:
        return int.from_bytes(self.take(8), "little", signed=True)

    def varint(self) -> int:
        value, self.offset = decode_varint(self.data, self.offset)
        return value

    def var_bytes(self) -> bytes:
        return self.take(self.varint())

    def count(self, item_floor: int) -> int:
        """A varint element count, refused when the remaining bytes cannot hold that many items."""
        n = self.varint()
        if n * item_floor > len(self.data) - self.offset:
            raise DecodeError(f"count {n} exceeds the remaining data")
        return n

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise DecodeError(f"{len(self.data) - self.offset} trailing bytes")


@dataclass(frozen=True, slots=True)
class TxIn:
    prev_txid: bytes                 # internal order
    prev_index: int
    script_sig: bytes
    sequence: int = 0xFFFFFFFF
    witness: tuple[bytes, ...] = ()

    def serialize(self) -> bytes:
        return (self.prev_txid + struct.pack("<I", self.prev_index) + encode_varint(len(self.script_sig))
                + self.script_sig + struct.pack("<I", self.sequence))

    @property
    def is_null_prevout(self) -> bool:
        return self.prev_txid == NULL_TXID and self.prev_index == NULL_INDEX


@dataclass(frozen=True, slots=True)
class TxOut:
    value: int                       # satoshis
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return struct.pack("<q", self.value) + encode_varint(len(self.script_pubkey)) + self.script_pubkey


def _serialize_witness(stack: tuple[bytes, ...]) -> bytes:
    return encode_varint(len(stack)) + b"".join(encode_varint(len(item)) + item for item in stack)


@dataclass(frozen=True, slots=True)
class Transaction:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    @property
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.inputs)

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].is_null_prevout

    def serialize_legacy(self) -> bytes:
        """No marker, flag or witness: the form the txid hashes."""
        return (struct.pack("<I", self.version)
                + encode_varint(len(self.inputs)) + b"".join(i.serialize() for i in self.inputs)
                + encode_varint(len(self.outputs)) + b"".join(o.serialize() for o in self.outputs)
                + struct.pack("<I", self.locktime))

    def serialize(self) -> bytes:
        """BIP144 form when any input has witness data, the legacy form otherwise (as Core sends it)."""
        if not self.has_witness:
            return self.serialize_legacy()
        return (struct.pack("<I", self.version) + b"\x00\x01"
                + encode_varint(len(self.inputs)) + b"".join(i.serialize() for i in self.inputs)
                + encode_varint(len(self.outputs)) + b"".join(o.serialize() for o in self.outputs)
                + b"".join(_serialize_witness(i.witness) for i in self.inputs)
                + struct.pack("<I", self.locktime))

    @property
    def txid(self) -> bytes:
        return dsha256(self.serialize_legacy())

    @property
    def wtxid(self) -> bytes:
        return dsha256(self.serialize())

    @classmethod
    def read_from(cls, reader: _Reader) -> "Transaction":
        version = reader.u32()   # uint32 since Core 28; signed before, same bytes
        # 41 bytes is the smallest input (outpoint 36, empty script 1, sequence 4); 9 the smallest output.
        n_in = reader.count(41)
        with_witness = False
        if n_in == 0:
            # BIP144: a zero input count is the marker; the flag byte must then be 1.
            flag = reader.take(1)[0]
            if flag != 1:
                raise DecodeError(f"unknown transaction flag {flag}")
            with_witness = True
            n_in = reader.count(41)
        inputs = [TxIn(reader.take(32), reader.u32(), reader.var_bytes(), reader.u32()) for _ in range(n_in)]
        outputs = tuple(TxOut(reader.i64(), reader.var_bytes()) for _ in range(reader.count(9)))
        if with_witness:
            inputs = [TxIn(i.prev_txid, i.prev_index, i.script_sig, i.sequence,
                           tuple(reader.var_bytes() for _ in range(reader.count(1)))) for i in inputs]
            if not any(i.witness for i in inputs):
                raise DecodeError("superfluous witness record")
        locktime = reader.u32()
        return cls(version, tuple(inputs), outputs, locktime)

    @classmethod
    def deserialize(cls, data: bytes) -> "Transaction":
        reader = _Reader(data)
        tx = cls.read_from(reader)
        reader.finish()
        return tx


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    prev_hash: bytes                 # internal order
    merkle_root: bytes               # internal order
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return build_header(self.version, self.prev_hash, self.merkle_root, self.time, self.bits, self.nonce)

    @property
    def hash(self) -> bytes:
        return dsha256(self.serialize())

    @classmethod
    def deserialize(cls, data: bytes) -> "BlockHeader":
        if len(data) != HEADER_SIZE:
            raise DecodeError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")
        version, prev, root, time, bits, nonce = struct.unpack("<I32s32sIII", data)
        return cls(version, prev, root, time, bits, nonce)


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...]

    def serialize(self) -> bytes:
        return (self.header.serialize() + encode_varint(len(self.transactions))
                + b"".join(tx.serialize() for tx in self.transactions))

    @classmethod
    def deserialize(cls, data: bytes) -> "Block":
        reader = _Reader(data)
        header = BlockHeader.deserialize(reader.take(HEADER_SIZE))
        # 10 bytes is a floor for any transaction (version, two counts, locktime): a sanity cap only.
        txs = tuple(Transaction.read_from(reader) for _ in range(reader.count(10)))
        reader.finish()
        return cls(header, txs)
