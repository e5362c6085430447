"""Tip-to-template latency: from a new tip on a Bitcoin Core stand-in to BitcoindSource yielding it.

    PYTHONPATH=. python bench/tip_to_template.py [--samples 200] [--mempool 4] [--modes zmq,longpoll,poll]

The clock starts when the stand-in's tip changes (its `on_tip` hook, just before it wakes long polls and
publishes ZMQ `hashblock`) and stops when `async for template in source.templates()` receives the template
built on that tip. Modes isolate one trigger each:
  zmq       ZMQ hashblock only (long polls held, polling off); needs pyzmq, skipped otherwise
  longpoll  getblocktemplate long polling only (polling off)
  poll      getbestblockhash polling only, every --poll-interval-s (long polls held)
--mempool N fills templates with N transactions (the four real mainnet ones, repeated) to show the cost
of a large getblocktemplate. Stand-in and source share one process and event loop, so the figures
include the stand-in serving the request; a real bitcoind answers from another process.
The lead will extend this to `mining.notify` on a socket.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bitcoind_standin import BitcoindStandin  # noqa: E402
from pool.bitcoind import BitcoindSource  # noqa: E402
from pool.zmq_listener import zmq_available  # noqa: E402
from standin_chain import real_mainnet_txs  # noqa: E402

OFF_S = 3600.0      # an interval that never fires during a run


async def measure(mode: str, samples: int, mempool: int, poll_interval_s: float) -> list[float]:
    node = BitcoindStandin(zmq_pub=mode == "zmq")
    txs = real_mainnet_txs()
    node.chain.set_mempool([txs[i % len(txs)] for i in range(mempool)])
    node.hold_longpolls = mode != "longpoll"
    await node.start()
    started: dict[str, float] = {}
    node.on_tip.append(lambda tip: started.__setitem__(tip, time.perf_counter()))
    source = BitcoindSource([node.url], user=node.user, password=node.password,
                            zmq_hashblock=node.zmq_endpoint if mode == "zmq" else None,
                            poll_interval_s=poll_interval_s if mode == "poll" else OFF_S,
                            health_interval_s=OFF_S, refresh_s=OFF_S)
    latencies: list[float] = []
    arrived = asyncio.Event()

    async def consume() -> None:
        async for tpl in source.templates():
            t0 = started.pop(tpl.prev_hash_display, None)
            if t0 is not None:
                latencies.append(time.perf_counter() - t0)
            arrived.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(arrived.wait(), 10)        # the first template
    await asyncio.sleep(0.3)                          # ZMQ SUB connects asynchronously (slow joiner)
    for _ in range(samples):
        if mode == "poll":     # tips arrive at random moments, not in step with the poll timer
            await asyncio.sleep(random.uniform(0, poll_interval_s))
        arrived.clear()
        node.mine()
        await asyncio.wait_for(arrived.wait(), 10 + poll_interval_s)
        await asyncio.sleep(0.005)                    # let duplicate fetches for this tip settle
    consumer.cancel()
    await source.close()
    await node.close()
    return latencies


def report(mode: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"{mode:9s} n={len(ms):4d}  p50={statistics.median(ms):7.2f} ms  p99={p99:7.2f} ms  "
          f"max={ms[-1]:7.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--mempool", type=int, default=4, help="transactions per template")
    parser.add_argument("--modes", default="zmq,longpoll,poll")
    parser.add_argument("--poll-interval-s", type=float, default=0.2)
    args = parser.parse_args()
    print(f"tip -> template, {args.samples} tips, {args.mempool} transactions per template, python "
          f"{sys.version.split()[0]}")
    for mode in args.modes.split(","):
        if mode == "zmq" and not zmq_available():
            print("zmq       skipped: pyzmq not installed (pip install 'kzpool[zmq]')")
            continue
        samples = min(args.samples, 50) if mode == "poll" else args.samples   # ~interval/2 per sample
        report(mode, await measure(mode, samples, args.mempool, args.poll_interval_s))


if __name__ == "__main__":
    asyncio.run(main())
