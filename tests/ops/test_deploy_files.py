"""deploy/ checked with the tools that read it: promtool for the Prometheus config and alert rules,
systemd-analyze for the unit, and the dashboards' queries against the metric names a running pool
really exports (no screenshots: a panel whose metric does not exist shows "No data" forever).

promtool comes with the Debian `prometheus` package, systemd-analyze with `systemd` (.ci/run installs
both). Without them: a failure in CI (CI=true), a skip elsewhere.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ci_required import unavailable

from deploy_queries import (ALERTS, DASHBOARDS, DEPLOY, PROMETHEUS_CONFIG, PROMETHEUS_OWN, alert_rules,
                            metric_names, panel_queries, variable_queries)
from ops_pool import http_get, start_ops_pool, until

UNIT = DEPLOY / "systemd" / "kzpool.service"
RULE_TESTS = Path(__file__).with_name("alert_rules_test.yml")
ENV_EXAMPLE = DEPLOY / "systemd" / "kzpool.env.example"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "kzpool.yml"
PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "kzpool.yml"
SUFFIXES = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
            "gauge": [""], "info": ["_info"], "summary": ["", "_count", "_sum", "_created"], "unknown": [""]}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"`{name}` is not installed (apt-get install {package})", "the deploy checks")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_promtool_checks_config_and_rules():
    promtool = tool("promtool", "prometheus")
    config = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))     # also checks the rule files it names
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    job = re.search(r"job_name:\s*(\S+)", PROMETHEUS_CONFIG.read_text())
    assert job and all('job="kzpool"' in q.expr for q in alert_rules()) and job.group(1) == "kzpool"


def test_promtool_alert_unit_tests_cover_every_alert():
    """alert_rules_test.yml: each alert fires on its series after its `for:`, with its labels and
    rendered annotations, and stays quiet on the healthy cases."""
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    text = RULE_TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", text))
    assert firing == {q.where.removeprefix("alert ") for q in alert_rules()}


def verify_unit(unit_text: str, root: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify in a scratch root: the system's unit library plus our unit, and a stand-in
    for the ExecStart binary (verify checks that it exists), so nothing is installed on this machine."""
    analyze = tool("systemd-analyze", "systemd")
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        unavailable("no systemd unit library under /usr/lib/systemd/system (apt-get install systemd)",
                    "the deploy checks")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/kzpool.service").write_text(unit_text)
    exec_start = re.search(r"^ExecStart=(\S+)", unit_text, re.M)
    assert exec_start, "the unit has no ExecStart"
    binary = root / exec_start.group(1).lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return run(analyze, "verify", "--man=no", f"--root={root}", "kzpool.service")


def test_systemd_unit_verifies_cleanly(tmp_path: Path):
    result = verify_unit(UNIT.read_text(), tmp_path / "root")
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    # The same check sees a broken unit: it is not a check that passes anything.
    broken = verify_unit(UNIT.read_text().replace("[Service]", "[Service]\nLimitNOFLIE=10"), tmp_path / "broken")
    assert "Unknown key" in broken.stdout + broken.stderr


def test_systemd_unit_says_what_the_issue_asks():
    unit = UNIT.read_text()
    for line in ("EnvironmentFile=/etc/kzpool/kzpool.env", "LimitNOFILE=1048576", "KillMode=mixed",
                 "KillSignal=SIGTERM", "User=kzpool"):
        assert f"\n{line}\n" in unit, line
    assert int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1)) > 10     # > stratum.shutdown_timeout_s
    used = set(re.findall(r"\$\{?(\w+)\}?", re.search(r"^ExecStart=.*$", unit, re.M).group(0)))
    defined = set(re.findall(r"^#?(\w+)=", ENV_EXAMPLE.read_text(), re.M))
    assert used <= defined, used - defined


def test_dashboards_are_provisionable():
    uid = re.search(r"uid:\s*(\S+)", DATASOURCE.read_text()).group(1)
    assert re.search(r"path:\s*/\S+", PROVIDER.read_text())
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (path.name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
            refs = {panel["datasource"]["uid"]} | {t["datasource"]["uid"] for t in panel["targets"]}
            assert refs == {uid}, (path.name, panel["title"], refs)
    assert len(DASHBOARDS) >= 3


async def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every name a scrape of a running pool carries (a bitcoind node and a share log wired, a miner that
    found a block: some series exist only once there is something to report, like the last block)."""
    ops = await start_ops_pool(tmp_path)
    try:
        ops.start_mining()
        await until(lambda: ops.app.sink.blocks.found)
        await ops.stop_mining()
        status, _, body = await http_get(ops.metrics_port, "/metrics")
    finally:
        await ops.close()
    assert status == 200
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(s.name for s in family.samples)
    return names


async def test_every_query_uses_only_exported_metrics(tmp_path: Path):
    exported = await exported_metric_names(tmp_path) | PROMETHEUS_OWN
    queries = panel_queries() + alert_rules() + [q for q, _ in variable_queries()]
    unknown = {f"{q.where}: {name}" for q in queries for name in metric_names(q.expr) if name not in exported}
    assert not unknown, "\n".join(sorted(unknown))
    assert all(metric_names(q.expr) for q in queries), "a query that selects no metric"
    assert all(n.startswith("kzpool_") for n in exported - PROMETHEUS_OWN)


def test_refusal_reasons_exported_from_zero_are_the_ones_the_code_uses():
    from compliance import accreditation, authorizer, curtailment, standing, work_gate
    from pool.metrics import REFUSAL_REASONS
    used = {authorizer.UNKNOWN_LOGIN, authorizer.OUTSIDE_DATACENTRE, authorizer.REGISTRY_UNAVAILABLE,
            standing.EXPIRED, standing.SUSPENDED, standing.REVOKED, standing.NOT_YET_VALID,
            curtailment.CURTAILED, curtailment.QUOTA_USED_UP, curtailment.OUTSIDE_SCHEDULE,
            curtailment.HOURLY_VOLUME_USED_UP,
            work_gate.NODE_LOCATION_FAILED, accreditation.ACCREDITATION_EXPIRED}
    assert used <= set(REFUSAL_REASONS)
