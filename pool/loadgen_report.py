"""Figures for `kzpool bench stratum`: percentiles, the per-process reports added up, the issue's
targets judged on a result, and the text summary."""
from __future__ import annotations

import math
from array import array
from typing import Any


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def ms_summary(values: list[float], *quantiles: tuple[str, float]) -> dict[str, float]:
    v = sorted(values)
    out = {name: round(percentile(v, q) * 1000, 3) for name, q in quantiles}
    out["max"] = round(v[-1] * 1000, 3) if v else float("nan")
    out["n"] = len(v)
    return out


def per_unit(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """Microseconds per unit of each counter's increase (CPU seconds by thread, per share or connect)."""
    return {k: round((after[k] - before.get(k, 0.0)) / units * 1e6, 1) for k in after}


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The generator processes' "rate" reports as one result: counts, rates, latency percentiles."""
    accepted = sum(x["accepted"] for x in reports)
    sent = sum(x["sent"] for x in reports)
    rejected: dict[str, int] = {}
    for x in reports:
        for code, n in x["rejected"].items():
            rejected[str(code)] = rejected.get(str(code), 0) + n
    latencies = [v for x in reports for v in array("d", x["latencies"])]
    sent_at = [v for x in reports for v in array("d", x["sent_at"])]
    wall = max(x["submit_seconds"] for x in reports)
    drained = max([wall] + [x["drained_seconds"] for x in reports])     # until the last reply
    generator_cpu = sum(x["generator_cpu_s"] for x in reports)
    return {"duration_s": round(wall, 2), "sent": sent, "accepted": accepted, "rejected": rejected,
            "unanswered": sum(x["unanswered"] for x in reports),
            "throttled": sum(x["throttled"] for x in reports),
            "offered_shares_per_s": round(sent / wall, 1),
            "accepted_shares_per_s": round(accepted / drained, 1),
            "submit_latency_ms": ms_summary(latencies, ("p50", 0.5), ("p99", 0.99), ("p999", 0.999)),
            "submit_latency_ms_by_second": by_second(sent_at, latencies),
            "generator_cpu_us_per_share": round(generator_cpu / max(accepted, 1) * 1e6, 1)}


def by_second(sent_at: list[float], latencies: list[float]) -> list[dict[str, float]]:
    """p50/p99/max of the submits sent in each second of the window: shows whether a tail is one
    stall or spread evenly."""
    buckets: dict[int, list[float]] = {}
    for t, v in zip(sent_at, latencies):
        buckets.setdefault(int(t), []).append(v)
    return [{"second": k, **ms_summary(buckets[k], ("p50", 0.5), ("p99", 0.99))} for k in sorted(buckets)]


def split_rate(rate: float, parts: int) -> list[float]:
    return [rate / parts] * parts if parts else []


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on this run's figures (None: not measured in this run)."""
    fan = r.get("notify_fanout_ms", {})
    idle = r.get("idle_connections", {}).get("ok", 0)
    lat = r.get("submit_latency_ms", {})
    cpu = r.get("server_cpu_us_per_share")
    return {
        "cpu_us_per_share_le_20": None if cpu is None else cpu <= 20,
        "p99_submit_lt_5ms_at_10k_per_s":
            (lat.get("p99", 1e9) < 5) if r.get("accepted_shares_per_s", 0) >= 9500 else None,
        "fanout_all_within_500ms": (fan.get("max", 1e9) <= 500 and fan.get("received") == fan.get("connections"))
        if fan and "max" in fan else None,
        "idle_100k_under_1gib": (r.get("server_rss_mb", 1e9) < 1024) if idle >= 100_000 else None,
    }


def format_text(r: dict[str, Any]) -> str:
    lines = [f"kzpool bench stratum  load {r['load_average_before']} -> {r.get('load_average_after')}"]
    for key in ("idle_connections", "miner_connections"):
        if key in r:
            c = r[key]
            lines.append(f"  {key:18s} ok={c['ok']} failed={c['failed']} in {c['seconds']} s ({c['per_s']}/s)")
    if "server_rss_per_idle_conn_kb" in r:
        lines.append(f"  memory per idle connection: RSS {r['server_rss_per_idle_conn_kb']} KB, "
                     f"PSS {r['server_pss_per_idle_conn_kb']} KB; server CPU while only idle: "
                     f"{r.get('server_cpu_cores_idle')} cores")
    if "accepted" in r:
        lat = r["submit_latency_ms"]
        lines.append(f"  accepted {r['accepted']} of {r['sent']} in {r['duration_s']} s = "
                     f"{r['accepted_shares_per_s']}/s; rejected {r['rejected']} unanswered {r['unanswered']}")
        lines.append(f"  submit latency ms p50 {lat['p50']} p99 {lat['p99']} p999 {lat['p999']} max {lat['max']}")
    if "server_cpu_us_per_share" in r:
        lines.append(f"  server CPU {r['server_cpu_s']} s (user {r['server_user_s']} sys {r['server_sys_s']}; "
                     f"{r['server_cpu_cores']} cores) = {r['server_cpu_us_per_share']} us per accepted share "
                     f"{r['server_cpu_us_per_share_by_thread']}; generator {r['generator_cpu_us_per_share']} us/share"
                     + (f"; database server {r['database_cpu_us_per_share']} us/share"
                        if "database_cpu_us_per_share" in r else ""))
    if "notify_fanout_ms" in r:
        f = r["notify_fanout_ms"]
        lines.append(f"  notify fan-out ms p50 {f.get('p50')} p99 {f.get('p99')} max {f.get('max')} "
                     f"received {f.get('received')}/{f.get('connections')}; inside the pool (slowest "
                     f"worker) {f.get('server_tip_to_notify_ms')}")
    if "server_rss_mb" in r:
        lines.append(f"  server RSS {r['server_rss_mb']} MB, PSS {r['server_pss_mb']} MB "
                     f"({r['server_processes']} processes)")
    lines.append(f"  targets {r['targets']}")
    lines.extend(f"  note: {n}" for n in r.get("notes", []))
    return "\n".join(lines)
