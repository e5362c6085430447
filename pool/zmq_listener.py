"""Bitcoin Core's `-zmqpubhashblock` feed, when pyzmq is installed (the optional `zmq` extra).

pyzmq is imported lazily: without it `zmq_available()` is False and BitcoindSource polls
`getbestblockhash` instead. A ZMQ SUB socket reconnects by itself, so there is no backoff here; a missed
message (sequence gap, or a node that restarted) costs at most one poll interval, because the source keeps
polling at a slower health-check pace and long-polls as well.

Core's message is three frames: b"hashblock", the 32-byte hash in display order (so `.hex()` equals the
RPC's hex), and a 4-byte little-endian sequence number.
"""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("kzpool.zmq")


def zmq_available() -> bool:
    try:
        import zmq.asyncio  # noqa: F401
    except ImportError:
        return False
    return True


async def watch_hashblock(endpoint: str, on_block: Callable[[str, int], None]) -> None:
    """Call `on_block(hash_display_hex, sequence)` for each hashblock message, until cancelled."""
    import zmq
    import zmq.asyncio

    sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"hashblock")
    sock.setsockopt(zmq.RCVHWM, 0)     # blocks are rare: never drop one because a queue filled
    sock.connect(endpoint)
    log.info("zmq_subscribed endpoint=%s topic=hashblock", endpoint)
    last_seq: int | None = None
    try:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3 or frames[0] != b"hashblock" or len(frames[1]) != 32 or len(frames[2]) != 4:
                log.warning("zmq_bad_message endpoint=%s frames=%d", endpoint, len(frames))
                continue
            seq = int.from_bytes(frames[2], "little")
            if last_seq is not None and seq != (last_seq + 1) & 0xFFFFFFFF:
                log.info("zmq_sequence_gap endpoint=%s expected=%d got=%d", endpoint, last_seq + 1, seq)
            last_seq = seq
            on_block(frames[1].hex(), seq)
    finally:
        sock.close(linger=0)
