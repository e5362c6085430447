"""kill -9 tests with real processes (tests/compliance/audit_crash_driver.py plays the pool): the
driver appends records flat out, is SIGKILLed at a random moment, and `kzpool audit verify --db`
(tests/compliance/test_audit_cli.py runs the same command as its own process)
still passes; every seq the driver reported committed is there; a restart continues the chain.
Also two driver processes writing one database at once, one of them killed: still one chain."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from audit_fixtures import audit_db_url, signing_key, timeout  # noqa: F401
from compliance import audit_cli
from compliance.audit_keys import SigningKey
from compliance.audit_store import AuditStore
from pool.db import Database

DRIVER = Path(__file__).with_name("audit_crash_driver.py")
ROOT = DRIVER.parents[2]
ROUNDS = 2
SEED = int(os.environ.get("KZPOOL_CRASH_SEED", random.SystemRandom().randrange(2**32)))


class Driver:
    def __init__(self, url: str, key_file: Path, log_path: Path, writer: int = 0) -> None:
        self.args = [sys.executable, str(DRIVER), "--database-url", url, "--key", str(key_file),
                     "--writer", str(writer)]
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.committed = 0
        self.ready_seq = 0
        self._first_commit = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout(30))
        assert line.startswith(b"ready "), f"driver did not start: {line!r}, see {self.log_path}"
        self.ready_seq = int(line.split()[1])
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            if line.startswith(b"committed "):
                self.committed = max(self.committed, int(line.split()[1]))
                self._first_commit.set()

    async def kill_at_random(self, rng: random.Random) -> None:
        await asyncio.wait_for(self._first_commit.wait(), timeout(30))
        await asyncio.sleep(rng.uniform(0.0, 0.25))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL
        assert self._reader is not None
        await self._reader


async def committed_head(url: str) -> int:
    db = Database(url)
    try:
        return (await AuditStore(db).read_state()).head.seq
    finally:
        await db.close()


async def test_kill_9_mid_write_leaves_a_chain_that_verifies(
        audit_db_url: str, signing_key: SigningKey, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(SEED)
    key_file = tmp_path / "keys" / "audit-ed25519.pem"
    previous_head = 0
    for round_no in range(ROUNDS):
        driver = Driver(audit_db_url, key_file, tmp_path / "driver.log")
        await driver.start()
        assert driver.ready_seq == previous_head        # a restart picks up the committed head
        await driver.kill_at_random(rng)
        head = await committed_head(audit_db_url)
        assert head >= driver.committed > previous_head, f"seed {SEED}"
        code = await asyncio.to_thread(audit_cli.main, ["verify", "--db", "--database-url",
                                                        audit_db_url, "--pubkey",
                                                        signing_key.public.hex])
        assert code == 0, f"round {round_no}, seed {SEED}"
        previous_head = head


async def test_two_processes_one_chain_even_when_one_is_killed(
        audit_db_url: str, signing_key: SigningKey, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(SEED + 1)
    key_file = tmp_path / "keys" / "audit-ed25519.pem"
    drivers = [Driver(audit_db_url, key_file, tmp_path / f"driver{n}.log", writer=n)
               for n in range(2)]
    await asyncio.gather(*(driver.start() for driver in drivers))
    await drivers[0].kill_at_random(rng)
    await asyncio.sleep(0.1)                              # the survivor keeps writing alone
    await drivers[1].kill_at_random(rng)
    assert all(d.committed for d in drivers)
    code = await asyncio.to_thread(audit_cli.main, ["verify", "--db", "--database-url",
                                                    audit_db_url, "--pubkey",
                                                    signing_key.public.hex])
    assert code == 0, f"seed {SEED}"
