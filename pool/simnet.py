"""A simulated chain: a `TemplateSource` that needs no Bitcoin node.

It hands out real-format templates (BIP34 heights, easy configurable bits, subsidy + fees, a few synthetic
but well-formed transactions, some with witness, and a default witness commitment) and judges submitted
blocks with `blockcheck`, an independent reading of the consensus rules, returning Core's reasons.
Accepted blocks become the new tip and the next template follows at once.

The transactions spend made-up outpoints: nothing checks scripts or inputs here, only shapes, hashes and
amounts. Time comes from an injectable clock so tests control curtime and the future-time limit.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import AsyncIterator, Callable

from .blockcheck import ChainRules, check_block
from .hashing import build_header, dsha256
from .merkle import witness_commitment_script_for
from .script import push_data
from .targets import target_from_nbits
from .template import BlockTemplate, SubmitOutcome, TemplateTx
from .txparse import Transaction, TxIn, TxOut

SIMNET_BITS = 0x1F00FFFF          # about 65 536 hashes per block: seconds for a CPU miner
BLOCK_VERSION = 0x20000000        # BIP9 top bits, no deployment signalled
COIN = 100_000_000
MEDIAN_TIME_SPAN = 11             # blocks in Core's median-time-past


def block_subsidy(height: int, halving_interval: int = 210_000) -> int:
    halvings = height // halving_interval
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def synthetic_transaction(rng: random.Random, with_witness: bool) -> Transaction:
    """A well-formed one-input transaction with a signature-sized scriptSig or witness, 1-2 P2WPKH outputs."""
    signature, pubkey = rng.randbytes(71), b"\x02" + rng.randbytes(32)
    if with_witness:
        txin = TxIn(rng.randbytes(32), rng.randrange(4), b"", 0xFFFFFFFD, (signature, pubkey))
    else:
        txin = TxIn(rng.randbytes(32), rng.randrange(4), push_data(signature) + push_data(pubkey), 0xFFFFFFFD)
    outputs = tuple(TxOut(rng.randrange(1_000, 10 * COIN), b"\x00\x14" + rng.randbytes(20))
                    for _ in range(rng.randint(1, 2)))
    return Transaction(2, (txin,), outputs, 0)


def template_transaction(tx: Transaction, fee: int) -> TemplateTx:
    legacy, full = tx.serialize_legacy(), tx.serialize()
    return TemplateTx(full, tx.txid, tx.wtxid, fee, weight=3 * len(legacy) + len(full), sigops=1)


class SimulatedChain:
    """`TemplateSource` for demos and tests: an in-memory chain with easy proof of work."""
    name = "simnet"

    def __init__(self, *, bits: int = SIMNET_BITS, tx_count: int = 3, refresh_s: float = 30.0,
                 clock: Callable[[], float] = time.time, start_height: int = 1, seed: int = 0,
                 send_witness_commitment: bool = True, halving_interval: int = 210_000) -> None:
        target_from_nbits(bits)            # refuse an unusable nBits now rather than at the first block
        if start_height < 1:
            raise ValueError("start_height must be at least 1: the chain starts on a genesis block")
        self.bits = bits
        self.tx_count = tx_count
        self.refresh_s = refresh_s
        self.send_witness_commitment = send_witness_commitment
        self.halving_interval = halving_interval
        self._clock = clock
        self._rng = random.Random(seed)
        genesis_time = int(clock()) - 1
        # A stand-in for the block below start_height: its hash only has to be unique.
        genesis = build_header(1, bytes(32), dsha256(b"kzpool simnet genesis"), genesis_time, bits, seed)
        self.tip_hash = dsha256(genesis)
        self.tip_height = start_height - 1
        self.accepted: list[bytes] = []            # hashes of accepted blocks, oldest first
        self.orphaned: set[bytes] = set()          # blocks a test's reorg took out of the chain
        self._below_start = self.tip_hash
        self._known_blocks = {self.tip_hash}
        self._recent_times = [genesis_time]
        self._fees: dict[bytes, int] = {}          # txid -> fee, for every tx handed out on this tip
        self._sequence = 0
        self._changed = asyncio.Event()
        self._closed = False
        self.template = self._new_template()

    @property
    def median_time_past(self) -> int:
        times = sorted(self._recent_times[-MEDIAN_TIME_SPAN:])
        return times[len(times) // 2]

    def _new_transactions(self) -> tuple[TemplateTx, ...]:
        txs = []
        for i in range(self.tx_count):
            # Even positions carry witness data, so any non-empty template needs a commitment.
            tx = template_transaction(synthetic_transaction(self._rng, i % 2 == 0), self._rng.randrange(200, 20_000))
            self._fees[tx.txid] = tx.fee
            txs.append(tx)
        return tuple(txs)

    def _new_template(self) -> BlockTemplate:
        self._sequence += 1
        txs = self._new_transactions()
        height = self.tip_height + 1
        mintime = self.median_time_past + 1
        commitment = witness_commitment_script_for([tx.wtxid for tx in txs]) if self.send_witness_commitment else None
        return BlockTemplate(
            version=BLOCK_VERSION,
            prev_hash=self.tip_hash,
            height=height,
            bits=self.bits,
            curtime=max(int(self._clock()), mintime),
            mintime=mintime,
            coinbasevalue=block_subsidy(height, self.halving_interval) + sum(tx.fee for tx in txs),
            transactions=txs,
            default_witness_commitment=commitment,
            longpollid=f"{self.tip_hash[::-1].hex()}{self._sequence}",
            target=target_from_nbits(self.bits),
            rules=("csv", "segwit", "taproot"),
            mutable=("time", "transactions", "prevblock"),
            source=self.name,
        )

    def _publish(self) -> None:
        self.template = self._new_template()
        # Wake every waiting iterator, then arm a fresh event for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def refresh(self) -> BlockTemplate:
        """A new template on the same tip: fresh transactions and time (clean_jobs=false territory)."""
        self._publish()
        return self.template

    def rules(self) -> ChainRules:
        return ChainRules(
            tip_hash=self.tip_hash,
            height=self.tip_height + 1,
            bits=self.bits,
            median_time_past=self.median_time_past,
            now=int(self._clock()),
            subsidy=block_subsidy(self.tip_height + 1, self.halving_interval),
            fees=self._fees,
            known_blocks=self._known_blocks,
        )

    async def templates(self) -> AsyncIterator[BlockTemplate]:
        """The current template at once, then each new one: a new tip, or a refresh every `refresh_s`."""
        yielded = 0
        while not self._closed:
            if self._sequence != yielded:
                yielded = self._sequence
                yield self.template
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), self.refresh_s)
            except TimeoutError:
                # Several iterators may time out together; only the first one to see no change refreshes.
                if self._sequence == yielded and not self._closed:
                    self.refresh()

    async def submit_block(self, block: bytes) -> list[SubmitOutcome]:
        reason = check_block(block, self.rules())
        if reason is None:
            self._accept(dsha256(block[:80]), int.from_bytes(block[68:72], "little"))
        return [SubmitOutcome(self.name, reason)]

    def _accept(self, block_hash: bytes, block_time: int) -> None:
        self.tip_hash = block_hash
        self.tip_height += 1
        self.accepted.append(block_hash)
        self._known_blocks.add(block_hash)
        self._recent_times = (self._recent_times + [block_time])[-MEDIAN_TIME_SPAN:]
        self._fees.clear()                         # a new tip: the next template brings its own mempool
        self._publish()

    async def confirmations(self, block_hash_display: str) -> int | None:
        """As Core's getblockheader: 1 for the tip, -1 for a block off the best chain, None for a
        block this chain never accepted (the payout tracker's `confirmations` callable)."""
        block_hash = bytes.fromhex(block_hash_display)[::-1]
        if block_hash in self.orphaned:
            return -1
        try:
            return len(self.accepted) - self.accepted.index(block_hash)
        except ValueError:
            return None

    def mine_foreign(self, count: int = 1) -> list[bytes]:
        """Blocks found by someone else on the current tip (no proof of work: nothing here checks
        a block it did not receive): the chain moves on and the pool gets a clean job."""
        for _ in range(count):
            block_time = max(int(self._clock()), self.median_time_past + 1)
            self._accept(dsha256(b"foreign" + self.tip_hash + self._sequence.to_bytes(8, "little")), block_time)
        return self.accepted[-count:]

    def reorg(self, depth: int) -> list[bytes]:
        """The last `depth` blocks leave the best chain (a competing branch won); returns them.
        The tip goes back `depth` blocks and the next template builds on it."""
        if not 0 < depth <= len(self.accepted):
            raise ValueError("reorg depth must be 1..number of accepted blocks")
        gone, self.accepted = self.accepted[-depth:], self.accepted[:-depth]
        self.orphaned.update(gone)
        self.tip_height -= depth
        self.tip_hash = self.accepted[-1] if self.accepted else self._below_start
        self._recent_times = self._recent_times[:max(1, len(self._recent_times) - depth)]
        self._fees.clear()
        self._publish()
        return gone

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
