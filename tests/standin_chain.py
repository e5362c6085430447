"""Chain state behind the Bitcoin Core stand-in: templates from real mainnet transactions, block checks.

The chain continues mainnet block 100000 (its real header is the base tip) at a regtest-easy target
(bits 207fffff) so tests can solve blocks in a few hashes. Submitted blocks are checked independently of
kzpool's own code: python-bitcoinlib deserialises them and runs its CheckBlock (PoW and merkle checks off,
since its mainnet limits do not fit this target), and this module adds Core's own rules in Core's order,
returning Core's reason strings (`high-hash`, `bad-txnmrklroot`, `bad-cb-length`, `bad-cb-height`,
`bad-witness-merkle-match`, `bad-cb-amount`, ...). What it does not do: scripts and UTXOs; a transaction is
"spendable" when the stand-in knows it (it was offered in a template).
"""
from __future__ import annotations

import json
import secrets
import struct
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Iterable

from bitcoin.core import CBlock, CheckBlock, CTransaction, GetLegacySigOpCount, b2lx
from bitcoin.core.script import CScript

VECTORS = json.loads((Path(__file__).parent / "vectors" / "mainnet_txs.json").read_text())
REGTEST_BITS = 0x207FFFFF
COIN = 100_000_000
HALVING_INTERVAL = 210_000        # mainnet's: the chain continues from mainnet height 100000
MAX_FUTURE_BLOCK_TIME_S = 2 * 60 * 60
MAX_BLOCK_WEIGHT = 4_000_000
COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")
OP_TRUE_SCRIPT = b"\x51"


class BlockDecodeError(ValueError):
    """submitblock's RPC error -22 (the block could not be parsed or has no coinbase first)."""


def dsha256(data: bytes) -> bytes:
    return sha256(sha256(data).digest()).digest()


def bits_to_target(bits: int) -> int:
    exponent, mantissa = bits >> 24, bits & 0x7FFFFF
    return mantissa >> 8 * (3 - exponent) if exponent <= 3 else mantissa << 8 * (exponent - 3)


POW_LIMIT = bits_to_target(REGTEST_BITS)


def subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def merkle_root(leaves: list[bytes]) -> bytes:
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


@dataclass(frozen=True)
class MempoolTx:
    raw: bytes
    txid: str          # display hex
    wtxid: str         # display hex
    fee: int
    weight: int
    sigops: int        # legacy sigops scaled by the witness factor, as GBT reports "sigops"
    spends: tuple[str, ...]

    @classmethod
    def from_hex(cls, data: str, fee: int) -> "MempoolTx":
        tx = CTransaction.deserialize(bytes.fromhex(data))
        raw = tx.serialize()
        stripped = tx.serialize(dict(include_witness=False))
        return cls(raw, b2lx(tx.GetTxid()), b2lx(dsha256(raw)), fee, 3 * len(stripped) + len(raw),
                   4 * GetLegacySigOpCount(tx), tuple(b2lx(i.prevout.hash) for i in tx.vin))


def real_mainnet_txs() -> list[MempoolTx]:
    """Block 100000's three transactions and the first SegWit transaction (block 481824)."""
    return [MempoolTx.from_hex(t["hex"], t["fee"]) for t in VECTORS["transactions"]]


@dataclass
class BlockRecord:
    hash: str
    height: int
    header: bytes
    chainwork: int
    ntx: int = 0
    active: bool = True

    @property
    def prev(self) -> str:
        return self.header[4:36][::-1].hex()

    @property
    def time(self) -> int:
        return struct.unpack_from("<I", self.header, 68)[0]


class Chain:
    """Block index, active chain and mempool of one stand-in node."""

    def __init__(self, mempool: Iterable[MempoolTx] = ()) -> None:
        base = bytes.fromhex(VECTORS["block_100000"]["header_hex"])
        height = VECTORS["block_100000"]["height"]
        record = BlockRecord(dsha256(base)[::-1].hex(), height, base, 2 * (height + 1), 4)
        self.blocks: dict[str, BlockRecord] = {record.hash: record}
        self.tip = record
        # The active chain by height: a node's block index answers getblockhash and nextblockhash
        # without walking the chain (tests mine thousands of blocks and ask about each of them).
        self.active_at: dict[int, str] = {record.height: record.hash}
        self.mempool: list[MempoolTx] = list(mempool)
        self.known: dict[str, MempoolTx] = {tx.txid: tx for tx in self.mempool}
        self.tx_updates = 1          # Core's nTransactionsUpdated: part of the longpollid

    @property
    def longpollid(self) -> str:
        return f"{self.tip.hash}{self.tx_updates}"

    def set_mempool(self, txs: Iterable[MempoolTx]) -> None:
        self.mempool = list(txs)
        self.known.update((tx.txid, tx) for tx in self.mempool)
        self.tx_updates += 1

    def median_time_past(self, record: BlockRecord) -> int:
        times = []
        while record is not None and len(times) < 11:
            times.append(record.time)
            record = self.blocks.get(record.prev)
        return sorted(times)[len(times) // 2]

    def template(self, now: int | None = None) -> dict:
        tip, txs = self.tip, self.mempool
        mintime = self.median_time_past(tip) + 1
        position = {tx.txid: i + 1 for i, tx in enumerate(txs)}
        wtxids = [bytes(32)] + [bytes.fromhex(tx.wtxid)[::-1] for tx in txs]
        commitment = dsha256(merkle_root(wtxids) + bytes(32))
        return {
            "capabilities": ["proposal"], "version": 0x20000000, "rules": ["csv", "!segwit", "taproot"],
            "vbavailable": {}, "vbrequired": 0, "previousblockhash": tip.hash,
            "transactions": [{"data": tx.raw.hex(), "txid": tx.txid, "hash": tx.wtxid,
                              "depends": sorted(position[s] for s in set(tx.spends) if s in position),
                              "fee": tx.fee, "sigops": tx.sigops, "weight": tx.weight} for tx in txs],
            "coinbaseaux": {}, "coinbasevalue": subsidy(tip.height + 1) + sum(tx.fee for tx in txs),
            "longpollid": self.longpollid, "target": f"{POW_LIMIT:064x}", "mintime": mintime,
            "mutable": ["time", "transactions", "prevblock"], "noncerange": "00000000ffffffff",
            "sigoplimit": 80000, "sizelimit": 4000000, "weightlimit": MAX_BLOCK_WEIGHT,
            "curtime": max(int(time.time()) if now is None else now, mintime), "bits": f"{REGTEST_BITS:08x}",
            "height": tip.height + 1, "default_witness_commitment": (COMMITMENT_PREFIX + commitment).hex(),
        }

    def mine(self, parent: str | None = None) -> str:
        """Another miner's block (coinbase only) on `parent` (default: the tip); returns its hash.

        The coinbase tag is random: two stand-ins mining in the same second must make two branches.
        """
        record = self.blocks[parent or self.tip.hash]
        tpl = {"previousblockhash": record.hash, "height": record.height + 1, "bits": f"{REGTEST_BITS:08x}",
               "version": 0x20000000, "curtime": max(int(time.time()), self.median_time_past(record) + 1),
               "coinbasevalue": subsidy(record.height + 1), "transactions": []}
        raw = build_block(tpl, tag=b"external" + secrets.token_bytes(4))
        self._accept(CBlock.deserialize(raw), raw, record)
        return dsha256(raw[:80])[::-1].hex()

    def submit(self, raw: bytes, now: int | None = None) -> str | None:
        """submitblock: None when the block extends the active chain, else Core's reason string."""
        try:
            block = CBlock.deserialize(raw)
        except Exception:
            raise BlockDecodeError("Block decode failed") from None
        if not block.vtx or not block.vtx[0].is_coinbase():
            raise BlockDecodeError("Block does not start with a coinbase")
        if b2lx(block.GetHash()) in self.blocks:
            return "duplicate"
        now = int(time.time()) if now is None else now
        reason = check_context_free(block, now) or self._check_contextual(block, now)
        if reason:
            return reason
        record = self._accept(block, raw, self.blocks[b2lx(block.hashPrevBlock)])
        if not record.active:
            return "inconclusive"    # valid, stored, but not on the most-work chain: what Core says
        included = {b2lx(tx.GetTxid()) for tx in block.vtx[1:]}
        if included & {tx.txid for tx in self.mempool}:
            self.set_mempool(tx for tx in self.mempool if tx.txid not in included)
        return None

    def _check_contextual(self, block: CBlock, now: int) -> str | None:
        parent = self.blocks.get(b2lx(block.hashPrevBlock))
        if parent is None:
            return "prev-blk-not-found"
        if block.nBits != REGTEST_BITS:
            return "bad-diffbits"
        if block.nTime <= self.median_time_past(parent):
            return "time-too-old"
        if block.nTime > now + MAX_FUTURE_BLOCK_TIME_S:
            return "time-too-new"
        if block.nVersion < 4:
            return f"bad-version(0x{block.nVersion & 0xFFFFFFFF:08x})"
        height = parent.height + 1
        coinbase = block.vtx[0]
        if not bytes(coinbase.vin[0].scriptSig).startswith(bytes(CScript([height]))):
            return "bad-cb-height"
        reason = check_witness(block)
        if reason:
            return reason
        fees = 0
        for tx in block.vtx[1:]:
            known = self.known.get(b2lx(tx.GetTxid()))
            if known is None:
                return "bad-txns-inputs-missingorspent"
            fees += known.fee
        if sum(out.nValue for out in coinbase.vout) > subsidy(height) + fees:
            return "bad-cb-amount"
        return None

    def _accept(self, block: CBlock, raw: bytes, parent: BlockRecord) -> BlockRecord:
        work = (1 << 256) // (bits_to_target(block.nBits) + 1)
        record = BlockRecord(b2lx(block.GetHash()), parent.height + 1, raw[:80], parent.chainwork + work,
                             len(block.vtx), active=False)
        self.blocks[record.hash] = record
        if record.chainwork > self.tip.chainwork:
            self._reorg_to(record)
        return record

    def _reorg_to(self, new_tip: BlockRecord) -> None:
        fork = new_tip
        branch = []
        while not fork.active:
            branch.append(fork)
            fork = self.blocks[fork.prev]
        old = self.tip
        while old is not fork:
            old.active = False
            del self.active_at[old.height]
            old = self.blocks[old.prev]
        for record in branch:
            record.active = True
            self.active_at[record.height] = record.hash
        self.tip = new_tip

    def header_json(self, block_hash: str) -> dict | None:
        record = self.blocks.get(block_hash)
        if record is None:
            return None
        version, _, merkle, ntime, bits, nonce = struct.unpack("<I32s32sIII", record.header)
        info = {"hash": record.hash, "confirmations": self.tip.height - record.height + 1 if record.active
                else -1, "height": record.height, "version": version, "versionHex": f"{version:08x}",
                "merkleroot": merkle[::-1].hex(), "time": ntime, "mediantime": self.median_time_past(record),
                "nonce": nonce, "bits": f"{bits:08x}", "difficulty": difficulty(bits),
                "chainwork": f"{record.chainwork:064x}", "nTx": record.ntx, "previousblockhash": record.prev}
        following = self.active_at.get(record.height + 1) if record.active else None
        if following is not None:
            info["nextblockhash"] = following
        return info

    def active_hash_at(self, height: int) -> str | None:
        """The main chain's block at `height`; None beyond the tip (and below the first block known)."""
        return self.active_at.get(height)

    def chain_info(self) -> dict:
        tip = self.tip
        return {"chain": "regtest", "blocks": tip.height, "headers": tip.height, "bestblockhash": tip.hash,
                "difficulty": difficulty(REGTEST_BITS), "time": tip.time,
                "mediantime": self.median_time_past(tip), "verificationprogress": 1,
                "initialblockdownload": False, "chainwork": f"{tip.chainwork:064x}", "size_on_disk": 0,
                "pruned": False, "warnings": []}


def difficulty(bits: int) -> float:
    return bits_to_target(0x1D00FFFF) / bits_to_target(bits)


# python-bitcoinlib's CheckBlock messages, mapped to the reject reasons Core gives for the same rule.
_CHECKBLOCK_REASONS = (("vtx empty", "bad-blk-length"), ("MAX_BLOCK_SIZE", "bad-blk-length"),
                       ("MAX_BLOCK_WEIGHT", "bad-blk-weight"), ("not coinbase", "bad-cb-missing"),
                       ("more than one coinbase", "bad-cb-multiple"), ("duplicate", "bad-txns-duplicate"),
                       ("SigOpCount", "bad-blk-sigops"), ("time", "time-too-new"))


def check_context_free(block: CBlock, now: int) -> str | None:
    """Core's CheckBlock, in its order: PoW, merkle root, then structure and each transaction."""
    target = bits_to_target(block.nBits)
    if not 0 < target <= POW_LIMIT or int.from_bytes(block.GetHash(), "little") > target:
        return "high-hash"
    if block.hashMerkleRoot != block.calc_merkle_root():
        return "bad-txnmrklroot"
    if not 2 <= len(block.vtx[0].vin[0].scriptSig) <= 100:
        return "bad-cb-length"
    try:
        CheckBlock(block, fCheckPoW=False, fCheckMerkleRoot=False, cur_time=now)
    except Exception as exc:       # CheckBlockError, CheckTransactionError, CheckBlockHeaderError
        return next((reason for text, reason in _CHECKBLOCK_REASONS if text in str(exc)), "bad-txns")
    return None


def check_witness(block: CBlock) -> str | None:
    """BIP141: the highest-index commitment output, the coinbase witness nonce, or no witness at all."""
    coinbase = block.vtx[0]
    positions = [i for i, out in enumerate(coinbase.vout)
                 if len(out.scriptPubKey) >= 38 and bytes(out.scriptPubKey[:6]) == COMMITMENT_PREFIX]
    if positions:
        stack = coinbase.wit.vtxinwit[0].scriptWitness.stack if coinbase.wit.vtxinwit else ()
        if len(stack) != 1 or len(stack[0]) != 32:
            return "bad-witness-nonce-size"
        leaves = [bytes(32)] + [dsha256(tx.serialize()) for tx in block.vtx[1:]]
        if bytes(coinbase.vout[positions[-1]].scriptPubKey[6:38]) != dsha256(merkle_root(leaves) + stack[0]):
            return "bad-witness-merkle-match"
    elif any(tx.has_witness() for tx in block.vtx):
        return "unexpected-witness"
    if block.GetWeight() > MAX_BLOCK_WEIGHT:
        return "bad-blk-weight"
    return None


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    return b"\xfd" + struct.pack("<H", n) if n <= 0xFFFF else b"\xfe" + struct.pack("<I", n)


def build_block(tpl: dict, *, tag: bytes = b"/standin/", payout: int | None = None,
                script_sig: bytes | None = None, commitment: bytes | None = None, with_commitment: bool = True,
                witness_nonce: bytes = bytes(32), merkle: bytes | None = None, ntime: int | None = None,
                version: int | None = None, solve: bool = True) -> bytes:
    """A block from a getblocktemplate result, built with hashlib only (not kzpool's builder).

    Keyword overrides make the faulty blocks the tests need; `solve=False` grinds a nonce whose hash is
    ABOVE the target (a deterministic high-hash).
    """
    height = tpl["height"]
    if script_sig is None:
        script_sig = bytes(CScript([height])) + bytes([len(tag)]) + tag
    dwc = tpl.get("default_witness_commitment") if with_commitment else None
    outputs = [(tpl["coinbasevalue"] if payout is None else payout, OP_TRUE_SCRIPT)]
    if dwc:
        outputs.append((0, commitment if commitment is not None else bytes.fromhex(dwc)))
    body = (b"\x01" + bytes(32) + b"\xff\xff\xff\xff" + _varint(len(script_sig)) + script_sig
            + b"\xff\xff\xff\xff" + _varint(len(outputs))
            + b"".join(struct.pack("<q", v) + _varint(len(s)) + s for v, s in outputs))
    legacy = struct.pack("<i", 2) + body + bytes(4)
    coinbase = (struct.pack("<i", 2) + b"\x00\x01" + body + b"\x01" + _varint(len(witness_nonce))
                + witness_nonce + bytes(4)) if dwc else legacy
    txids = [dsha256(legacy)] + [bytes.fromhex(t["txid"])[::-1] for t in tpl["transactions"]]
    root = merkle if merkle is not None else merkle_root(txids)
    bits = int(tpl["bits"], 16)
    target = bits_to_target(bits)
    head = struct.pack("<i32s32sII", tpl["version"] if version is None else version,
                       bytes.fromhex(tpl["previousblockhash"])[::-1], root,
                       tpl["curtime"] if ntime is None else ntime, bits)
    for nonce in range(1 << 32):
        header = head + struct.pack("<I", nonce)
        if (int.from_bytes(dsha256(header), "little") <= target) == solve:
            break
    txs = [coinbase] + [bytes.fromhex(t["data"]) for t in tpl["transactions"]]
    return header + _varint(len(txs)) + b"".join(txs)
