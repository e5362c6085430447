"""`kzpool bench stratum` end to end, small: a real pool subprocess, two generator processes, real
shares over TCP, idle connections, one block and its notify fan-out; the JSON must hold sane figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_stratum_small_run(tmp_path: Path):
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "pool.bench_stratum", "--miners", "6", "--idle", "20", "--rate", "300",
            "--duration", "3", "--warmup", "0.5", "--processes", "2", "--idle-cpu-window", "0", "--json", str(out)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())

    assert r["idle_connections"]["ok"] == 20 and r["miner_connections"]["ok"] == 6
    assert r["accepted"] > 300, r                      # about 900 offered in 3 s
    assert r["accepted_shares_per_s"] > 100
    # Every share is valid at the pool's difficulty: the only refusals allowed are stale ones (21),
    # from shares in flight when the block's clean job arrived.
    assert set(r["rejected"]) <= {"21"}, r["rejected"]
    assert r["rejected"].get("21", 0) < 0.05 * r["sent"]
    assert r["accepted"] + sum(r["rejected"].values()) == r["sent"] and r["unanswered"] == 0
    lat = r["submit_latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"] < 5000
    fan = r["notify_fanout_ms"]
    assert fan["block_share_result"] is True
    assert fan["received"] == fan["connections"] == 26   # idle and submitting connections alike
    assert 0 < fan["p50"] <= fan["max"] < 5000
    assert r["server_cpu_us_per_share"] > 0 and r["server_rss_mb"] > 10
    assert r["server_rss_per_idle_conn_kb"] is not None
    assert "cpu_us_per_share_le_20" in r["targets"]
