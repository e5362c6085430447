"""The PromQL in deploy/: every dashboard panel's queries and variables, every alert rule, and the metric
names an expression uses. Shared by the static check (test_deploy_files) and the live one
(test_prometheus_real). The alert file is read without a YAML library: its rules keep `expr:` on one
line, and `alert_rules` fails loudly when one does not.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

# Grafana's built-in variables, replaced by what they would be on a short dashboard range: `[30s]` holds
# several samples at the test's 1 s scrape interval.
GRAFANA_BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "1m"}
# Series Prometheus makes itself for every target; a dashboard may use them.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?![\w.])")


@dataclass(frozen=True)
class Query:
    where: str        # "dashboard kzpool-overview panel 'Hashrate' A", "alert KzpoolDown"
    expr: str


def panel_queries() -> list[Query]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append(Query(f"dashboard {board['uid']} panel {panel['title']!r} {target['refId']}",
                                 target["expr"]))
    return out


def variable_queries() -> list[tuple[Query, str]]:
    """(the metric selector, the label) of each `label_values(selector, label)` variable."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for var in board["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert m, f"{path.name} variable {var['name']}: only label_values(selector, label) is supported"
            out.append((Query(f"dashboard {board['uid']} variable {var['name']}", m.group(1)), m.group(2)))
    return out


def alert_rules() -> list[Query]:
    out, name = [], None
    for line in ALERTS.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("expr:"):
            expr = stripped.split(":", 1)[1].strip()
            assert name and expr and expr[0] not in "|>", f"alert {name}: keep expr on one line"
            out.append(Query(f"alert {name}", expr))
            name = None
    return out


def for_grafana_vars(expr: str) -> str:
    """The expression as Prometheus gets it from Grafana with every variable set to All."""
    for var, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def signal_of(expr: str) -> str:
    """An alert's expression with `bool` comparisons: it returns its series whether or not it fires."""
    return _COMPARISON.sub(r"\1 bool \2", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords, labels or numbers)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _LABEL_LISTS.sub(" ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isalnum() or before in "._":
            continue        # the exponent of 1e-9
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names
