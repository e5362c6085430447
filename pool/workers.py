"""`kzpool run --workers N`: a supervisor and N Stratum worker processes on one port.

The supervisor prepares the database once, owns the template source through a `TemplateHub`,
serves the merged /metrics, and starts each worker as `kzpool run ... --worker-index I --hub PATH`.
Workers share the Stratum port with SO_REUSEPORT (the kernel spreads new connections), hand out
extranonce1 values under their own prefix, and write shares to the same database. A worker that dies
is restarted; SIGTERM to the supervisor stops the workers in order (each sends `client.reconnect`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile

from .app import PoolApp, build_source
from .config import PoolConfig
from .metrics_merge import start_merged_metrics_server
from .template_hub import TemplateHub

log = logging.getLogger("kzpool.workers")

RESTART_DELAY_S = 1.0        # a worker that keeps crashing is restarted at most once a second


class Supervisor:
    def __init__(self, cfg: PoolConfig, child_args: list[str], workers: int) -> None:
        self.cfg = cfg
        self.child_args = child_args
        self.count = workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.restarts = 0

    async def _spawn(self, index: int, hub_path: str) -> None:
        self.procs[index] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pool.cli", "run", *self.child_args, "--worker-index", str(index),
            "--hub", hub_path)
        log.info("worker_started worker=%d pid=%d", index, self.procs[index].pid)

    async def _watch(self, index: int, hub_path: str) -> None:
        while not self.stopping:
            code = await self.procs[index].wait()
            if self.stopping:
                return
            log.error("worker_exited worker=%d code=%s restarting_in_s=%g", index, code, RESTART_DELAY_S)
            self.restarts += 1
            await asyncio.sleep(RESTART_DELAY_S)
            await self._spawn(index, hub_path)

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):     # before any worker exists: never orphan one
            loop.add_signal_handler(sig, stop.set)
        await PoolApp(self.cfg).prepare_storage()
        hub_dir = tempfile.mkdtemp(prefix="kzpool-hub-")
        os.chmod(hub_dir, 0o700)
        hub = TemplateHub(build_source(self.cfg), os.path.join(hub_dir, "hub.sock"))
        await hub.start()
        endpoints = []
        if self.cfg.metrics.enabled:
            endpoints.append(await start_merged_metrics_server(lambda: dict(hub.metrics_ports),
                                                               self.cfg.metrics.host, self.cfg.metrics.port))
        for index in range(self.count):
            await self._spawn(index, hub.socket_path)
        watchers = [asyncio.create_task(self._watch(i, hub.socket_path)) for i in range(self.count)]
        log.info("supervisor_running workers=%d port=%d", self.count, self.cfg.stratum.port)
        await stop.wait()
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        timeout = self.cfg.stratum.shutdown_timeout_s + 10
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in self.procs.values())), timeout)
        except TimeoutError:
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.kill()
        for task in watchers:
            task.cancel()
        for endpoint in endpoints:
            endpoint.close()
        await hub.close()
        shutil.rmtree(hub_dir, ignore_errors=True)
        log.info("supervisor_stopped")
        return 0


def child_arguments(argv: list[str]) -> list[str]:
    """The supervisor's own `run` arguments minus --workers, for its workers."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out
