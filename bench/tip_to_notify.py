"""Tip-to-notify latency: from a new tip on a Bitcoin Core stand-in to `mining.notify` on a miner's socket.

    python bench/tip_to_notify.py [--samples 200] [--miners 50] [--modes zmq,longpoll]

The whole pool runs (PoolApp, node.source = bitcoind) against the stand-in over real HTTP; `--miners`
authorized Stratum connections listen on real TCP sockets. The clock starts in the stand-in's `on_tip`
hook (just before it answers long polls and publishes ZMQ `hashblock`) and stops when the LAST miner's
socket has delivered the clean `mining.notify` for that tip. Modes isolate one trigger each (the
200 ms getbestblockhash poll is switched off). Target: p99 under 50 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bitcoind_standin import BitcoindStandin  # noqa: E402
from pool.app import PoolApp  # noqa: E402
from pool.config import load_config  # noqa: E402
from pool.zmq_listener import zmq_available  # noqa: E402


async def miner(port: int, index: int, seen: dict[str, list[float]]) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"id":1,"method":"mining.subscribe","params":[]}\n'
                 + json.dumps({"id": 2, "method": "mining.authorize", "params": [f"demo.m{index}", "x"]}).encode()
                 + b"\n")

    async def read() -> None:
        async for line in reader:
            msg = json.loads(line)
            if msg.get("method") == "mining.notify" and msg["params"][8]:
                prevhash = msg["params"][1]
                seen.setdefault(prevhash, []).append(time.perf_counter())
    asyncio.create_task(read())
    return writer


def stratum_prevhash(display: str) -> str:
    raw = bytes.fromhex(display)[::-1]
    return b"".join(raw[i:i + 4][::-1] for i in range(0, 32, 4)).hex()


async def measure(mode: str, samples: int, miners: int) -> list[float]:
    node = BitcoindStandin(zmq_pub=mode == "zmq")
    node.hold_longpolls = mode != "longpoll"
    await node.start()
    sets = ['stratum.host="127.0.0.1"', "stratum.port=0", "node.source=bitcoind", f'node.rpc_urls=["{node.url}"]',
            f'node.rpc_user="{node.user}"', f'node.rpc_password="{node.password}"', "node.refresh_s=3600",
            "node.poll_interval_s=3600", "log.level=WARNING"]
    if mode == "zmq":
        sets.append(f'node.zmq_hashblock="{node.zmq_endpoint}"')
    app = PoolApp(load_config(overrides=sets))
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 10)
    seen: dict[str, list[float]] = {}
    writers = [await miner(app.server.ports[0], i, seen) for i in range(miners)]
    while sum(1 for c in app.server.connections.values() if c.session.workers) < miners:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)            # ZMQ subscribers join late (slow joiner)
    started: dict[str, float] = {}
    node.on_tip.append(lambda tip: started.__setitem__(stratum_prevhash(tip), time.perf_counter()))
    latencies = []
    for _ in range(samples):
        key = stratum_prevhash(node.mine()[-1])
        deadline = time.perf_counter() + 10
        while len(seen.get(key, [])) < miners and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        if len(seen.get(key, [])) == miners:
            latencies.append(max(seen[key]) - started[key])
        await asyncio.sleep(0.01)
    for w in writers:
        w.close()
    await app.stop()
    await node.close()
    return latencies


def report(mode: str, latencies: list[float], miners: int) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"{mode:9s} miners={miners:4d} n={len(ms):4d}  p50={statistics.median(ms):7.2f} ms  "
          f"p99={p99:7.2f} ms  max={ms[-1]:7.2f} ms  target p99<50 ms: {'met' if p99 < 50 else 'MISSED'}")
    return {"mode": mode, "miners": miners, "n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": p99}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--miners", type=int, default=50)
    parser.add_argument("--modes", default="zmq,longpoll")
    args = parser.parse_args()
    print(f"tip -> mining.notify on every miner's socket, {args.samples} tips, python {sys.version.split()[0]}")
    for mode in args.modes.split(","):
        if mode == "zmq" and not zmq_available():
            print("zmq       skipped: pyzmq not installed (pip install 'kzpool[zmq]')")
            continue
        report(mode, await measure(mode, args.samples, args.miners), args.miners)


if __name__ == "__main__":
    asyncio.run(main())
