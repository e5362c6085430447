"""A real Prometheus scrapes a running pool while a test miner submits shares; then every PromQL
expression of deploy/ (dashboard panels, dashboard variables, alert rules) is evaluated through
Prometheus's HTTP API and must be valid and return data. Alert rules are evaluated as their signal
(comparisons made `bool`): the series they watch exist, whether or not they fire. Then the node and
the pool are taken down and the matching alerts must fire.

Prometheus is the Debian package `prometheus` (.ci/run installs it). Without it: a failure in CI
(CI=true), a skip elsewhere.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ci_required import unavailable

from deploy_queries import (ALERTS, PROMETHEUS_CONFIG, alert_rules, for_grafana_vars, panel_queries, signal_of,
                            variable_queries)
from ops_pool import OpsPool, start_ops_pool, wait_s

SCRAPES_BEFORE_QUERYING = 6      # a rate over [30s] needs two samples; six leave margin for a slow start


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    unavailable("the `prometheus` binary is not installed (apt-get install prometheus)", "the Prometheus tests")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config(metrics_port: int) -> str:
    """deploy/prometheus/prometheus.yml with the test's target and a 1 s scrape and evaluation interval."""
    text = PROMETHEUS_CONFIG.read_text()
    for old, new in [('"127.0.0.1:9108"', f'"127.0.0.1:{metrics_port}"'), ("scrape_interval: 15s", "scrape_interval: 1s"),
                     ("evaluation_interval: 15s", "evaluation_interval: 1s"), ("scrape_timeout: 10s", "scrape_timeout: 1s")]:
        assert old in text, f"{PROMETHEUS_CONFIG} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


test_config.__test__ = False   # a helper, not a test


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:       # 400 for a bad query: the body says why
            return json.loads(exc.read())

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict:
        # In a thread: the pool under test runs on this event loop and must keep serving scrapes.
        return await asyncio.to_thread(self._get, path, params)

    async def query(self, expr: str) -> dict:
        return await self.get("/api/v1/query", {"query": expr})

    async def series(self, expr: str) -> list[dict]:
        reply = await self.query(expr)
        assert reply["status"] == "success", f"{expr}: {reply.get('error')}"
        return reply["data"]["result"]

    async def wait_for(self, expr: str, timeout_s: float) -> list[dict]:
        async with asyncio.timeout(wait_s(timeout_s)):
            while True:
                try:
                    found = await self.series(expr)
                except OSError:
                    found = []
                if found:
                    return found
                await asyncio.sleep(0.25)


@pytest.fixture
async def ops(tmp_path: Path):
    pool = await start_ops_pool(tmp_path / "pool")
    yield pool
    await pool.close()


@pytest.fixture
async def prometheus(ops: OpsPool, tmp_path: Path):
    binary = prometheus_binary()
    conf = tmp_path / "prometheus"
    conf.mkdir()
    (conf / "prometheus.yml").write_text(test_config(ops.metrics_port))
    shutil.copy(ALERTS, conf / "alerts.yml")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={conf / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=error",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    prom = Prometheus(port)
    try:
        await prom.wait_for('up{job="kzpool"} == 1', timeout_s=15)
        yield prom
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_every_dashboard_and_alert_query_returns_data_then_alerts_fire(ops: OpsPool, prometheus: Prometheus):
    ops.start_mining()
    await ops.hang_up_one()
    await prometheus.wait_for(f'count_over_time(up{{job="kzpool"}}[1m]) >= {SCRAPES_BEFORE_QUERYING}', 20)
    await prometheus.wait_for("kzpool_blocks_found_total > 0", 10)
    await prometheus.wait_for('kzpool_shares_total{reason=~"duplicate|stale"} > 0', 10)

    empty = []
    for q in panel_queries():
        reply = await prometheus.query(for_grafana_vars(q.expr))
        assert reply["status"] == "success", f"{q.where}: {q.expr}: {reply.get('error')}"
        if not reply["data"]["result"]:
            empty.append(f"{q.where}: {q.expr}")
    for q, label in variable_queries():
        found = await prometheus.series(q.expr)
        if not any(label in s["metric"] for s in found):
            empty.append(f"{q.where}: {q.expr} has no label {label}")
    for q in alert_rules():
        assert (await prometheus.query(q.expr))["status"] == "success", q.where
        if not await prometheus.series(signal_of(q.expr)):
            empty.append(f"{q.where}: {signal_of(q.expr)}")
    assert not empty, "queries without data:\n" + "\n".join(empty)

    # Prometheus loaded the same rules, and evaluating them raised no error.
    groups = (await prometheus.get("/api/v1/rules"))["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {q.where.removeprefix("alert ") for q in alert_rules()}
    assert all(r["health"] == "ok" for r in loaded.values()), [(n, r.get("lastError")) for n, r in loaded.items()]

    # A node goes down: its alerts' expressions return the node, and the rule goes pending.
    await ops.stop_mining()
    await ops.node.stop()
    await prometheus.wait_for('kzpool_node_up{job="kzpool"} == 0', 10)
    assert await prometheus.series(_alert_expr("KzpoolNodeDown"))
    assert await prometheus.series(_alert_expr("KzpoolAllNodesDown"))
    await prometheus.wait_for('ALERTS{alertname="KzpoolNodeDown",alertstate="pending"}', 10)

    # The pool's metrics endpoint goes away: `up` drops to 0 and KzpoolDown's expression fires.
    ops.metrics_server.close()
    await ops.metrics_server.wait_closed()
    await prometheus.wait_for('up{job="kzpool"} == 0', 10)
    assert await prometheus.series(_alert_expr("KzpoolDown"))


def _alert_expr(name: str) -> str:
    return next(q.expr for q in alert_rules() if q.where == f"alert {name}")
