"""Production start-up as an operator meets it: no audit key -> refused; an old schema -> refused
with the command that fixes it; after `kzpool audit keygen` and `kzpool db upgrade` the pool runs."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kzpool(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pool.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_production_refuses_without_key_and_old_schema_then_runs(tmp_path: Path):
    port = free_port()
    url = f"sqlite+aiosqlite:///{tmp_path}/pool.sqlite3"
    sets = ["mode=production", 'accreditation.number="KZ-ACC-1"', 'accreditation.issued="2026-01-15"',
            'accreditation.expires="2029-01-15"', 'accreditation.authority="MDDIAI"', f'database.url="{url}"', 'stratum.host="127.0.0.1"', f"stratum.port={port}",
            'auth.authorizer="allowlist"', 'auth.logins=["farm1"]', 'auth.allowed_networks=["127.0.0.0/8"]',
            f'audit.key_file="{tmp_path}/audit.pem"', "metrics.enabled=false", "admin.enabled=false",
            "process.allow_root=true"]
    run = ["run"] + [a for s in sets for a in ("--set", s)]

    no_key = kzpool(run, tmp_path)
    assert no_key.returncode == 2 and "audit key" in no_key.stderr
    assert not (tmp_path / "audit.pem").exists()          # production never invents its own key

    keygen = kzpool(["audit", "keygen", "--key-file", str(tmp_path / "audit.pem"), "--database-url", url], tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    assert oct((tmp_path / "audit.pem").stat().st_mode & 0o777) == "0o600"

    old_schema = kzpool(run, tmp_path)
    assert old_schema.returncode == 2 and "kzpool db upgrade" in old_schema.stderr

    upgrade = kzpool(["db", "upgrade", "--database-url", url], tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pool.cli", *run], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("production pool never listened")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
