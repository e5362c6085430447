"""One load-generator process of `kzpool bench stratum`: an event loop (uvloop when installed) holding
its share of the simulated miners, driven by commands from the benchmark over a pipe.

Commands (tuples, first item the name) and their replies:
  ("idle", n, first_index)        open n idle connections        -> ("idle", ok, failed, seconds, errors)
  ("active", n, first_index)      open n submitting miners       -> ("active", ok, failed, seconds, errors)
  ("rate", shares_per_s, secs)    submit at that rate, then wait for the replies -> ("rate", report)
  ("arm",)                        note the next clean notify on every connection -> ("armed", connections)
  ("block",)                      mine a block on the first miner and submit it -> ("block", found, sent)
  ("fanout", wait_s)              the arrival times noted since "arm" -> ("fanout", times, armed, replies)
  ("close",)                      close everything and exit      -> ("closed",)
"""
from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any

from .loadgen_conn import IdleConn, MinerConn, Stats, open_connection

TICK_S = 0.002                 # pacing granularity of the submit loop
CONNECT_CONCURRENCY = 200      # handshakes in flight per process
HANDSHAKE_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 15.0         # after the last submit, how long to wait for outstanding replies


@dataclass(frozen=True)
class ProcSpec:
    index: int
    host: str
    port: int
    sources: tuple[str, ...]    # loopback source addresses; empty: let the kernel choose
    max_in_flight: int = 50_000


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Runner:
    def __init__(self, pipe: Any, spec: ProcSpec) -> None:
        self.pipe = pipe
        self.spec = spec
        self.stats = Stats()
        self.idle: list[IdleConn] = []
        self.miners: list[MinerConn] = []
        self.done = asyncio.Event()
        self._busy: asyncio.Task | None = None

    def source_for(self, index: int) -> str | None:
        sources = self.spec.sources
        return sources[index % len(sources)] if sources else None

    async def run(self) -> None:
        # A thread blocks on the pipe (the loop's add_reader would make the fd non-blocking, and a
        # large reply would then fail with EAGAIN); commands run as tasks on the loop.
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_commands, args=(loop,), daemon=True).start()
        await self.done.wait()

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                cmd = self.pipe.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(self.done.set)
                return
            loop.call_soon_threadsafe(self._on_command, cmd)
            if cmd[0] == "close":
                return

    def _on_command(self, cmd: tuple) -> None:
        handler = getattr(self, "cmd_" + cmd[0])
        task = asyncio.ensure_future(handler(*cmd[1:]))
        task.add_done_callback(self._report_failure)

    def _report_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.pipe.send(("error", f"{type(exc).__name__}: {exc}"))

    async def _open(self, n: int, first: int, cls: type, into: list) -> tuple[int, int, float,
                                                                              list[tuple[str, int]]]:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: dict[str, int] = {}
        started = time.monotonic()

        async def one(i: int) -> bool:
            async with sem:
                ready = loop.create_future()
                conn = cls(self.stats, i, ready)
                try:
                    await open_connection(loop, conn, self.spec.host, self.spec.port, self.source_for(i))
                    await asyncio.wait_for(ready, HANDSHAKE_TIMEOUT_S)
                except Exception as exc:        # counted and reported, never fatal for the run
                    key = f"{type(exc).__name__}: {exc}"[:160]
                    errors[key] = errors.get(key, 0) + 1
                    if conn.transport is not None:
                        conn.transport.close()
                    return False
                into.append(conn)
                return True
        results = await asyncio.gather(*(one(first + i) for i in range(n)))
        ok = sum(results)
        return ok, n - ok, time.monotonic() - started, sorted(errors.items(), key=lambda kv: -kv[1])[:5]

    async def cmd_idle(self, n: int, first: int) -> None:
        self.pipe.send(("idle",) + await self._open(n, first, IdleConn, self.idle))

    async def cmd_active(self, n: int, first: int) -> None:
        self.pipe.send(("active",) + await self._open(n, first, MinerConn, self.miners))

    async def cmd_rate(self, rate: float, seconds: float) -> None:
        st = self.stats
        st.reset()
        miners = [m for m in self.miners if m.transport is not None]
        cpu0 = self_cpu_s()
        started = time.monotonic()
        end = started + seconds
        sent = throttled = rr = 0
        now = started
        while now < end and miners:
            due = int((now - started) * rate) - sent - throttled
            for _ in range(due):
                if st.in_flight >= self.spec.max_in_flight:
                    throttled += 1
                    continue
                miner = miners[rr % len(miners)]
                rr += 1
                if miner.submit(now):
                    sent += 1
                else:
                    throttled += 1
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
        submitted_for = time.monotonic() - started
        drain_end = time.monotonic() + DRAIN_TIMEOUT_S
        while st.in_flight > 0 and time.monotonic() < drain_end:
            await asyncio.sleep(0.01)
        self.pipe.send(("rate", {
            "sent": st.sent, "accepted": st.accepted, "rejected": dict(st.rejected), "throttled": throttled,
            "unanswered": st.in_flight, "submit_seconds": submitted_for,
            "drained_seconds": st.last_reply - started, "latencies": st.latencies.tobytes(),
            "sent_at": (array("d", (t - started for t in st.sent_at))).tobytes(),
            "generator_cpu_s": self_cpu_s() - cpu0}))

    async def cmd_arm(self) -> None:
        self.stats.notify_arrivals = type(self.stats.notify_arrivals)("d")
        count = 0
        for conn in self.idle:
            if conn.transport is not None:
                conn.armed, conn._tail = True, b""
                count += 1
        for miner in self.miners:
            if miner.transport is not None:
                miner.armed = True
                count += 1
        self.pipe.send(("armed", count))

    async def cmd_block(self) -> None:
        miner = next((m for m in self.miners if m.transport is not None and m.job_params is not None), None)
        if miner is None:
            self.pipe.send(("block", None, None))
            return
        found, sent = await miner.mine_block()
        self.pipe.send(("block", found, sent))

    async def cmd_fanout(self, wait_s: float) -> None:
        armed = sum(1 for c in self.idle if c.transport is not None) + sum(
            1 for m in self.miners if m.transport is not None)
        deadline = time.monotonic() + wait_s
        def waiting() -> bool:
            return (len(self.stats.notify_arrivals) < armed
                    or any(len(m.block_replies) < len(m.block_ids) for m in self.miners if m.transport))
        while waiting() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        replies = [r for m in self.miners for r in m.block_replies]
        self.pipe.send(("fanout", self.stats.notify_arrivals.tobytes(), armed, replies))

    async def cmd_close(self) -> None:
        conns: list[IdleConn | MinerConn] = [*self.idle, *self.miners]
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0.1)
        self.pipe.send(("closed",))
        self.done.set()


def child_main(pipe: Any, spec: ProcSpec) -> None:
    """multiprocessing target: one event loop for this process's miners."""
    raise_nofile()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Runner(pipe, spec).run())
    finally:
        loop.close()
