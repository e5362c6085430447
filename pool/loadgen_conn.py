"""Simulated miners for `kzpool bench stratum`: one asyncio.Protocol per TCP connection.

- `MinerConn` does configure/subscribe/authorize, follows set_difficulty and mining.notify, and submits
  real shares: for each job it builds the 76-byte header prefix (its own extranonce1 in the coinbase),
  hashes candidate nonces in batches (the C extension's `hash_headers`, else hashlib) and keeps those
  whose hash meets the share target. Nonces that would be a block are skipped, so blocks happen only
  when the benchmark asks for one (`mine_block`). Every submit's reply is timed.
- `IdleConn` authorizes and then only reads; it notes when the next clean `mining.notify` arrives
  (a byte search, no JSON parsing) so the fan-out of a new block can be timed on every connection.

Times are `time.monotonic()`: CLOCK_MONOTONIC, the same clock in every process on Linux.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from array import array
from collections import defaultdict
from hashlib import sha256

from stratum.difficulty import target_for_difficulty
from stratum.jobs import prevhash_from_stratum_hex

from .hashing import dsha256, merkle_root_from_branch

from .native import load_extension

# The C extension's hash_headers, or hashlib when it is missing or KZPOOL_NO_C=1: slower, same answers.
_kzhash, _ = load_extension()
_c_hash_headers = _kzhash.hash_headers if _kzhash is not None else None

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
WORKER = "demo.bench"
FIRST_SUBMIT_ID = 100
NONCE_BATCH = 64
BLOCK_NONCE_START = 0x80000000    # block search nonces never overlap the share nonces (from 0)
CLEAN_NOTIFY_END = b",true]}\n"   # the last bytes of a mining.notify with clean_jobs = true


def hash_headers(headers: bytes) -> bytes:
    if _c_hash_headers is not None:
        return _c_hash_headers(headers)
    return b"".join(sha256(sha256(headers[i:i + 80]).digest()).digest() for i in range(0, len(headers), 80))


def target_from_nbits(nbits: int) -> int:
    return (nbits & 0x7FFFFF) << (8 * ((nbits >> 24) - 3))


def handshake_bytes(index: int) -> bytes:
    """configure, subscribe, authorize pipelined in one write, as ASIC firmware does."""
    return (b'{"id":1,"method":"mining.configure","params":[["version-rolling"],'
            b'{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}\n'
            b'{"id":2,"method":"mining.subscribe","params":["kzpool-bench/1.0"]}\n'
            + f'{{"id":3,"method":"mining.authorize","params":["{WORKER}{index}","x"]}}\n'.encode())


class Stats:
    """Per-process counters; the runner reports and resets them."""
    def __init__(self) -> None:
        self.reset()
        self.notify_arrivals: array = array("d")
        self.armed_at = 0.0

    def reset(self) -> None:
        self.sent = 0
        self.accepted = 0
        self.rejected: dict[int, int] = defaultdict(int)
        self.latencies: array = array("d")
        self.sent_at: array = array("d")          # send time of each latency, same order
        self.in_flight = 0
        self.last_reply = 0.0


class IdleConn(asyncio.Protocol):
    __slots__ = ("stats", "index", "ready", "transport", "_buf", "_tail", "armed", "failed")

    def __init__(self, stats: Stats, index: int, ready: asyncio.Future) -> None:
        self.stats = stats
        self.index = index
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._tail = b""
        self.armed = False
        self.failed = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(handshake_bytes(self.index))

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self._buf += data
            if b'"id":3,"result":true' in self._buf and b'"mining.notify"' in self._buf:
                self._buf = b""
                self.ready.set_result(True)
            elif b'"id":3,"result":null' in self._buf or b'"id":3,"result":false' in self._buf:
                self.ready.set_exception(ConnectionError("authorize refused: " + self._buf[-300:].decode()))
            return
        if self.armed and CLEAN_NOTIFY_END in self._tail + data:
            self.stats.notify_arrivals.append(time.monotonic())
            self.armed = False
        self._tail = data[-16:]

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake: {exc or 'by the pool'}"))
        self.transport = None


class MinerConn(asyncio.Protocol):
    """A miner that submits valid shares when `submit` is called (the runner paces the rate)."""

    def __init__(self, stats: Stats, index: int, ready: asyncio.Future) -> None:
        self.stats = stats
        self.index = index
        self.worker = f"{WORKER}{index}"
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self.extranonce1 = b""
        self.extranonce2_size = 4
        self._en2 = 0
        self.difficulty = 1.0
        self.job_id = ""
        self.job_params: list | None = None
        self.prefix = b""              # header bytes 0..75 for the current job and extranonce2
        self.submit_tail = ""          # '","<en2>","<ntime>","' of the submit params
        self.share_target = 0
        self.network_target = 0
        self.stock: list[int] = []
        self.next_nonce = 0
        self.pending: dict[int, float] = {}
        self.next_id = FIRST_SUBMIT_ID
        self.authorized = False
        self.armed = False
        self.block_ids: dict[int, float] = {}
        self.block_replies: list[tuple[float, object]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(handshake_bytes(self.index))

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake: {exc or 'by the pool'}"))
        self.transport = None
        self.stats.in_flight -= len(self.pending)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            if line:
                self._on_message(json.loads(line), now)

    def _on_message(self, msg: dict, now: float) -> None:
        method = msg.get("method")
        if method == "mining.notify":
            self._on_notify(msg["params"], now)
        elif method == "mining.set_difficulty":
            self.difficulty = float(msg["params"][0])
        elif method is None:
            self._on_reply(msg, now)

    def _on_reply(self, msg: dict, now: float) -> None:
        msg_id = msg.get("id")
        sent = self.pending.pop(msg_id, None) if isinstance(msg_id, int) else None
        if sent is not None:
            st = self.stats
            st.in_flight -= 1
            st.last_reply = now
            st.latencies.append(now - sent)
            st.sent_at.append(sent)
            if msg.get("result") is True:
                st.accepted += 1
            else:
                st.rejected[(msg.get("error") or [20])[0]] += 1
        elif msg_id in self.block_ids:
            self.block_replies.append((now, msg.get("result") if msg.get("error") is None else msg["error"]))
        elif msg_id == 2 and msg.get("result"):
            self.extranonce1 = bytes.fromhex(msg["result"][1])
            self.extranonce2_size = int(msg["result"][2])
        elif msg_id == 3:
            self.authorized = msg.get("result") is True
            if not self.authorized and not self.ready.done():
                self.ready.set_exception(ConnectionError(f"authorize refused: {msg.get('error')}"))

    def _on_notify(self, params: list, now: float) -> None:
        if params[8] and self.armed:
            self.stats.notify_arrivals.append(now)
            self.armed = False
        self.job_params = params
        self.job_id = params[0]
        self.share_target = target_for_difficulty(self.difficulty)
        self.network_target = target_from_nbits(int(params[6], 16))
        self._new_work()
        if self.authorized and not self.ready.done():
            self.ready.set_result(True)

    def _new_work(self) -> None:
        """A fresh extranonce2 on the current job: new merkle root, nonces from 0."""
        p = self.job_params
        assert p is not None
        self._en2 += 1
        en2 = self._en2.to_bytes(self.extranonce2_size, "big")
        coinbase = bytes.fromhex(p[2]) + self.extranonce1 + en2 + bytes.fromhex(p[3])
        root = merkle_root_from_branch(dsha256(coinbase), [bytes.fromhex(b) for b in p[4]])
        self.prefix = (struct.pack("<I", int(p[5], 16)) + prevhash_from_stratum_hex(p[1]) + root
                       + struct.pack("<II", int(p[7], 16), int(p[6], 16)))
        self.submit_tail = f'","{en2.hex()}","{p[7]}","'
        self.stock = []
        self.next_nonce = 0

    def _refill(self) -> None:
        start = self.next_nonce
        if start + NONCE_BATCH >= BLOCK_NONCE_START:
            self._new_work()
            start = 0
        prefix = self.prefix
        digests = hash_headers(b"".join(prefix + n.to_bytes(4, "little") for n in range(start, start + NONCE_BATCH)))
        share, block = self.share_target, self.network_target
        for i in range(NONCE_BATCH):
            value = int.from_bytes(digests[32 * i:32 * i + 32], "little")
            if value <= share and value > block:
                self.stock.append(start + i)
        self.next_nonce = start + NONCE_BATCH

    def submit(self, now: float) -> bool:
        if self.transport is None or self.job_params is None:
            return False
        while not self.stock:
            self._refill()
        nonce = self.stock.pop()
        msg_id = self.next_id
        self.next_id += 1
        self.pending[msg_id] = now
        self.stats.in_flight += 1
        self.stats.sent += 1
        self.transport.write(f'{{"id":{msg_id},"method":"mining.submit","params":["{self.worker}","{self.job_id}'
                             f'{self.submit_tail}{nonce:08x}"]}}\n'.encode())
        return True

    async def mine_block(self, time_limit_s: float = 120.0) -> tuple[float, float]:
        """Finds a nonce meeting the network target and submits it: (found at, sent at), where "sent"
        is taken just before the write."""
        started = time.monotonic()
        nonce = BLOCK_NONCE_START
        batch = 4096
        while time.monotonic() - started < time_limit_s:
            prefix, target = self.prefix, self.network_target
            digests = hash_headers(b"".join(prefix + n.to_bytes(4, "little") for n in range(nonce, nonce + batch)))
            for i in range(batch):
                if int.from_bytes(digests[32 * i:32 * i + 32], "little") <= target:
                    found = time.monotonic()
                    msg_id = self.next_id
                    self.next_id += 1
                    self.block_ids[msg_id] = found
                    assert self.transport is not None
                    line = (f'{{"id":{msg_id},"method":"mining.submit","params":["{self.worker}",'
                            f'"{self.job_id}{self.submit_tail}{nonce + i:08x}"]}}\n'.encode())
                    sent = time.monotonic()       # before the write: another process may see the notify first
                    self.transport.write(line)
                    return found, sent
            nonce += batch
            await asyncio.sleep(0)
        raise TimeoutError(f"no block found in {time_limit_s:g} s (network target too hard for the generator)")


async def open_connection(loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, host: str, port: int,
                          source: str | None) -> None:
    """Connects `protocol`, bound to `source` (a loopback address) when given. IP_BIND_ADDRESS_NO_PORT
    lets the kernel pick the port at connect time, so each source address offers the whole
    ephemeral range towards the pool's address and port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
        await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
