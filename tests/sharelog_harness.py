"""Real-process harness for the crash and outage tests: the driver process (a ShareLog behind TCP),
a client that submits shares and records every `true`, and ways to take SQLite away."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from db_fixtures import TIMEOUT_FACTOR, make_record, stored_share_keys
from pool.db import Database
from tcp_proxy import TcpProxy

DRIVER = Path(__file__).with_name("sharelog_crash_driver.py")
ShareKey = tuple[str, str]


class DriverProcess:
    """The pool stand-in, as a child process."""

    def __init__(self, database_url: str, spill: Path, log_path: Path,
                 commit_timeout_s: float = 1.0) -> None:
        self.args = [sys.executable, str(DRIVER), "--database-url", database_url,
                     "--spill", str(spill), "--commit-timeout", str(commit_timeout_s)]
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> int:
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(DRIVER.parents[1])})
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30 * TIMEOUT_FACTOR)
        assert line.startswith(b"ready "), f"driver did not start: {line!r}, see {self.log_path}"
        self.port = int(line.split()[1])
        return self.port

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 30 * TIMEOUT_FACTOR) == 0


@dataclass
class SubmittingClient:
    """Submits distinct shares over several connections, a window of them in flight on each, and
    records every acknowledgement, until stopped or the server goes away."""
    port: int
    first_index: int
    connections: int = 4
    window: int = 64
    acked: set[ShareKey] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await asyncio.gather(*(self._connection(c) for c in range(self.connections)))

    async def _connection(self, lane: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        slots = asyncio.Semaphore(self.window)

        async def read_acks() -> None:
            with contextlib.suppress(OSError):
                while line := await reader.readline():
                    verdict, share_hash, worker, *error = line.decode().split()
                    if verdict == "true":
                        self.acked.add((share_hash, worker))
                    else:
                        self.refused.append(" ".join(error))
                    slots.release()
            self._stop.set()  # the server went away: unblock the sender
            for _ in range(self.window):
                slots.release()

        acks = asyncio.create_task(read_acks())
        index = self.first_index + lane
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                await slots.acquire()
                record = make_record(index)
                writer.write(json.dumps(asdict(record)).encode() + b"\n")
                await writer.drain()
                index += self.connections
                self.sent += 1
        with contextlib.suppress(OSError):
            writer.write_eof()  # the server finishes what it has, then closes
        await acks


async def assert_stored_exactly_once(url: str, acked: set[ShareKey]) -> None:
    db = Database(url)
    try:
        counts = Counter(await stored_share_keys(db))
    finally:
        await db.close()
    missing = [key for key in acked if counts[key] == 0]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged shares lost: {missing[:3]}"
    assert max(counts.values(), default=1) == 1, "a share was stored twice"


async def wait_until_stored(url: str, acked: set[ShareKey], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * TIMEOUT_FACTOR
    while True:
        db = Database(url)
        try:
            stored = set(await stored_share_keys(db))
        finally:
            await db.close()
        if acked <= stored or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.1)


async def proxied(url: str) -> tuple[TcpProxy, str]:
    """A started TCP proxy in front of the PostgreSQL server of `url`, and the URL through it."""
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    return proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path:
    return Path(url.split("///", 1)[1])


@contextlib.contextmanager
def sqlite_write_locked(url: str) -> Iterator[None]:
    """Another process's write transaction holds the SQLite file: writers get SQLITE_BUSY."""
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def can_make_immutable(probe_dir: Path) -> bool:
    """chattr +i works here (root with CAP_LINUX_IMMUTABLE on ext4/xfs), and really stops writes."""
    probe = probe_dir / "immutable.probe"
    probe.write_bytes(b"x")
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            return False
        try:
            with open(probe, "ab"):
                return False
        except PermissionError:
            return True
    except FileNotFoundError:  # no chattr binary
        return False
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()


@contextlib.contextmanager
def sqlite_unwritable(url: str) -> Iterator[None]:
    """The database file and its WAL become immutable: every write fails (EPERM), even on file
    descriptors already open and even for root."""
    path = sqlite_path(url)
    files = [str(p) for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
