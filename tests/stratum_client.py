"""A test miner over a real TCP socket: speaks Stratum V1 and mines shares at easy difficulties."""
from __future__ import annotations

import asyncio
import json
from itertools import count
from typing import Any

from stratum.difficulty import target_for_difficulty
from stratum.jobs import Job, Submission

from cpu_miner import mine
from stratum_fixtures import job_from_notify

TIMEOUT = 10.0


class StratumTestClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = count(1)
        self.replies: dict[Any, dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.difficulty = 1.0
        self.jobs: dict[str, tuple[Job, float]] = {}
        self.last_job_id: str | None = None
        self.extranonce1 = b""
        self.extranonce2_size = 0
        self.closed = False
        self._new_message = asyncio.Event()
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, host: str, port: int) -> "StratumTestClient":
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("method"):
                    self._on_notification(msg)
                else:
                    self.replies[msg.get("id")] = msg
                self._new_message.set()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed = True
            self._new_message.set()

    def _on_notification(self, msg: dict[str, Any]) -> None:
        self.notifications.append(msg)
        if msg["method"] == "mining.set_difficulty":
            self.difficulty = msg["params"][0]
        elif msg["method"] == "mining.notify":
            p = msg["params"]
            target = (int(p[6], 16) & 0x7FFFFF) * 256 ** ((int(p[6], 16) >> 24) - 3)
            if p[8]:
                self.jobs.clear()
            self.jobs[p[0]] = (job_from_notify(p, target), self.difficulty)
            self.last_job_id = p[0]

    async def wait_for(self, predicate, timeout: float = TIMEOUT) -> None:
        async def loop() -> None:
            while not predicate():
                if self.closed:
                    raise ConnectionError("connection closed while waiting")
                self._new_message.clear()
                await self._new_message.wait()
        await asyncio.wait_for(loop(), timeout)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str, params: list[Any], wait: bool = True) -> dict[str, Any] | int:
        msg_id = next(self._ids)
        await self.send_raw(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        if not wait:
            return msg_id
        await self.wait_for(lambda: msg_id in self.replies)
        return self.replies[msg_id]

    async def handshake(self, worker: str = "demo.rig1", mask: str = "1fffe000") -> None:
        configure = await self.request("mining.configure", [["version-rolling"], {"version-rolling.mask": mask,
                                                                                  "version-rolling.min-bit-count": 2}])
        assert configure["error"] is None
        sub = await self.request("mining.subscribe", ["kzpool-test/1.0"])
        assert sub["error"] is None, sub
        self.extranonce1 = bytes.fromhex(sub["result"][1])
        self.extranonce2_size = sub["result"][2]
        auth = await self.request("mining.authorize", [worker, "x"])
        assert auth["result"] is True, auth
        await self.wait_for(lambda: self.last_job_id is not None)

    def mine_share(self, job_id: str | None = None, extranonce2: int = 0, version_bits: int | None = None,
                   worker: str = "demo.rig1") -> list[str]:
        """Submit params for a share that meets the job's difficulty."""
        job_id = job_id or self.last_job_id
        assert job_id is not None
        job, diff = self.jobs[job_id]
        en2 = extranonce2.to_bytes(self.extranonce2_size, "big")
        version = job.version if version_bits is None else (job.version & ~0x1FFFE000) | version_bits
        nonce, _ = mine(job, self.extranonce1, en2, target_for_difficulty(diff), version=version)
        params = [worker, job_id, en2.hex(), f"{job.ntime:08x}", f"{nonce:08x}"]
        if version_bits is not None:
            params.append(f"{version_bits:08x}")
        return params

    async def close(self) -> None:
        self._reader_task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def submission_of(job: Job, extranonce1: bytes, params: list[str], target: int) -> Submission:
    return Submission(extranonce1, bytes.fromhex(params[2]), int(params[3], 16), int(params[4], 16), job.version,
                      target)
