"""Logs of a real session: connection id on every session line, key=value or JSON lines, logins and
addresses anonymised when asked, and upstream errors rate-limited per event and node."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

import pytest

from pool.app import PoolApp
from pool.config import load_config
from pool.logsetup import Anonymiser, JsonFormatter, RepeatLimiter, UpstreamRepeatFilter, active_anonymiser, setup_logging
from pool.simnet import SimulatedChain
from stratum_client import StratumTestClient

# Lines the Stratum server writes about the server as a whole, not about one session.
SERVER_EVENTS = {"stratum_listening", "stratum_limits", "stratum_stopped", "share_hashing_failed"}


@pytest.fixture
def log_output(monkeypatch: pytest.MonkeyPatch):
    """Where setup_logging's handler writes; set inside the test body (pytest swaps sys.stderr per phase)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    yield lambda: monkeypatch.setattr(sys, "stderr", stream) or stream
    root.handlers[:], root.level = saved


async def one_session() -> None:
    """A miner authorizes, submits, sends junk; the pool shuts down under it (session_close reason=shutdown)."""
    cfg = load_config(overrides=['stratum.host="127.0.0.1"', "stratum.port=0", "stratum.start_difficulty=1e-6",
                                 "stratum.min_difficulty=1e-8", "stratum.shutdown_timeout_s=0.2"])
    app = PoolApp(cfg, source=SimulatedChain(bits=0x1D0FFFFF, refresh_s=3600))
    await app.start()
    await asyncio.wait_for(app.jobs.first_job.wait(), 5)
    miner = await StratumTestClient.connect("127.0.0.1", app.server.ports[0])
    await miner.handshake(worker="demo.rig7")
    assert (await miner.request("mining.submit", miner.mine_share(worker="demo.rig7")))["result"] is True
    await miner.send_raw(b'{"id": 99, "method": "mining.nonsense", "params": []}\n')
    await miner.send_raw(b"not json at all\n")
    await asyncio.sleep(0.05)
    await app.stop()
    await miner.close()


async def test_session_lines_carry_the_connection_id_and_anonymise_logins(log_output):
    output = log_output()
    anonymiser = setup_logging("DEBUG", "kv", anonymise=True)
    assert anonymiser is not None and active_anonymiser() is anonymiser
    await one_session()
    lines = output.getvalue().splitlines()
    stratum = [line.split(" ", 4) for line in lines if " kzpool.stratum " in line]
    session_lines = [parts for parts in stratum if parts[3] not in SERVER_EVENTS]
    assert {p[3] for p in session_lines} >= {"session_open", "authorized", "session_close"}
    assert all(p[4].startswith("conn=") for p in session_lines), session_lines
    text = output.getvalue()
    assert "login=demo" not in text and "demo.rig7" not in text
    assert f"login={anonymiser.pseudonym('demo')}" in text


async def test_json_lines_parse_and_keep_the_fields(log_output):
    output = log_output()
    assert setup_logging("DEBUG", "json") is None and active_anonymiser() is None
    await one_session()
    records = [json.loads(line) for line in output.getvalue().splitlines() if line.startswith("{")]
    authorized = [r for r in records if r["event"] == "authorized"]
    assert authorized and authorized[0]["login"] == "demo" and authorized[0]["conn"].isdigit()
    assert all({"ts", "level", "logger", "event"} <= r.keys() for r in records)


def test_json_keeps_values_with_spaces():
    record = logging.LogRecord("kzpool.stratum", logging.INFO, __file__, 1,
                               "session_close conn=%d reason=%s", (4, "send stalled over 30 s"), None)
    out = json.loads(JsonFormatter().format(record))
    assert out["event"] == "session_close" and out["conn"] == "4" and out["reason"] == "send stalled over 30 s"
    config = logging.LogRecord("kzpool.app", logging.INFO, __file__, 1, "pool_start config=%s",
                               ({"mode": "demo", "log": {"level": "INFO"}},), None)
    assert json.loads(JsonFormatter().format(config))["config"] == "{'mode': 'demo', 'log': {'level': 'INFO'}}"


def test_anonymiser_replaces_identities_and_keeps_infrastructure():
    a = Anonymiser(salt=b"fixed-salt")
    line = a.scrub("authorized conn=3 login=alice worker=alice.rig1 peer=203.0.113.7:4028 node=10.0.0.5:8332 "
                   "error=reset by 198.51.100.2 retry_in_s=0.50 x=[2001:db8::1]:3333")
    assert "alice" not in line and "203.0.113.7" not in line and "198.51.100.2" not in line and "2001:db8" not in line
    assert "node=10.0.0.5:8332" in line and "conn=3" in line and "retry_in_s=0.50" in line
    assert a.pseudonym("alice") == Anonymiser(salt=b"fixed-salt").pseudonym("alice")    # stable within a run
    assert a.pseudonym("alice") != Anonymiser().pseudonym("alice")                      # a new salt per run
    # Logins named in the config are replaced wherever they appear (the config dump at start).
    known = Anonymiser(salt=b"fixed-salt", identities=["alice", "bob"])
    dumped = known.scrub("pool_start config={'auth': {'logins': ['alice', 'bob'], 'authorizer': 'allowlist'}}")
    assert "alice" not in dumped and "'bob'" not in dumped and known.pseudonym("alice") in dumped
    assert "allowlist" in dumped and known.scrub("login=alice") == f"login={known.pseudonym('alice')}"


def test_repeat_limiter_counts_what_it_held_back():
    now = [0.0]
    limiter = RepeatLimiter(interval_s=60, clock=lambda: now[0], max_keys=2)
    assert limiter.check("a") == 0
    assert [limiter.check("a") for _ in range(5)] == [None] * 5
    now[0] = 61
    assert limiter.check("a") == 5 and limiter.check("a") is None
    limiter.check("b")
    limiter.check("c")          # "a" is the oldest and is forgotten: a fresh key again
    assert limiter.check("a") == 0


def test_upstream_errors_are_rate_limited_per_event_and_node():
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(UpstreamRepeatFilter(RepeatLimiter(60, clock=lambda: now[0])))
    upstream, ours = logging.getLogger("kzpool.bitcoind.test"), logging.getLogger("kzpool.shares.test")
    for log in (upstream, ours):
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.DEBUG)
    try:
        for i in range(100):
            upstream.warning("node_down node=%s failures=%d", "10.0.0.5:8332", i)
        upstream.warning("node_down node=%s failures=%d", "10.0.0.6:8332", 1)     # another node: its own line
        upstream.info("node_up node=%s", "10.0.0.5:8332")                         # not an error: never held back
        for _ in range(2):
            ours.warning("block_rejected height=%d", 7)                          # not upstream: never held back
        now[0] = 61
        upstream.warning("node_down node=%s failures=%d", "10.0.0.5:8332", 100)
    finally:
        for log in (upstream, ours):
            log.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "node_down node=10.0.0.5:8332 failures=0", "node_down node=10.0.0.6:8332 failures=1",
        "node_up node=10.0.0.5:8332", "block_rejected height=7", "block_rejected height=7",
        "node_down node=10.0.0.5:8332 failures=100 repeats_suppressed=99"]
