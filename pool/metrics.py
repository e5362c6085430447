"""Prometheus metrics, read from the running pool when Prometheus scrapes (names start with `kzpool_`).

Counters and gauges are derived at scrape time from what the components already count (the Stratum
server's `ServerStats`, the job feed, the block book, node health, the share log), so the share path
carries no metrics code. Three things cannot be read after the fact and are observed as they happen:
- submit latency: the server keeps the latencies of accepted shares; each scrape drains them into a
  histogram;
- tip-to-notify and notify fan-out: `JobFeedTimer` times the job feed's `on_template`;
- per-login hashrate: `MeteredShareSink` adds each accepted share's difficulty to `LoginWork`, a
  sliding window per login, and only the top `per_login_top_n` logins are exported (0 exports none),
  so a pool with 50 000 accounts does not make 50 000 series.
Hashrate for the whole pool is derived in Grafana: rate(kzpool_accepted_difficulty_total) * 2^32.

Extension point: features that land later (licences, audit log, attestation, curtailments, payouts)
register their own collector on `PoolMetrics.registry`; nothing here has to change.
"""
from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stratum.session import State

from .metering import JobFeedTimer, LoginWork, MeteredShareSink
from .targets import network_difficulty

if TYPE_CHECKING:
    from .app import PoolApp

# Every reason a share can be refused for (stratum/submit.py, stratum/session.py): exported at 0 from
# the start, so ratios and alerts have a series before the first refusal.
REJECT_REASONS = ("stale", "duplicate", "low_difficulty", "bad_ntime", "bad_version_bits",
                  "malformed_share", "unauthorized", "internal_error")
# A share is acknowledged after a commit of the share log: milliseconds normally, seconds when sick.
SUBMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_DRAIN = 100_000       # the server keeps at most this many latencies between scrapes


def pool_version() -> str:
    try:
        return version("kzpool")
    except PackageNotFoundError:
        return "unknown"


class PoolMetrics:
    """Everything metrics need from one PoolApp: the registry, the login window, the job timer.

    Build it before `app.start()` (so the first job is timed); it wraps `app.server.sink` and
    `app.jobs.on_template`, which is all the instrumentation the share and job paths get.
    """

    def __init__(self, app: "PoolApp", per_login_top_n: int = 10, login_label: Callable[[str], str] = str,
                 login_window_s: float = 600.0) -> None:
        self.app = app
        self.per_login_top_n = per_login_top_n
        self.login_label = login_label        # the log anonymiser's pseudonym when log.anonymise is on
        self.work = LoginWork(login_window_s)
        app.server.sink = MeteredShareSink(app.server.sink, self.work)
        self.timer = JobFeedTimer(app.jobs, lambda: app.server.stats.last_fanout_s)
        self.submit_latency = Histogram("kzpool_share_submit_seconds", "Time from a share's arrival to its "
                                        "durable acceptance (the `true` reply)", buckets=SUBMIT_BUCKETS,
                                        registry=None)
        self.node_rpc_latency = Histogram("kzpool_node_rpc_seconds", "Bitcoin Core RPC call latency by node "
                                          "and method (long polls excluded)", ["node", "method"],
                                          buckets=RPC_BUCKETS, registry=None)
        self.sharelog_commit = Histogram("kzpool_sharelog_commit_seconds", "Duration of share-log batch commits "
                                         "(what an accepted share waits for before `true`)",
                                         buckets=RPC_BUCKETS, registry=None)
        self.registry = CollectorRegistry()
        self.registry.register(PoolCollector(self))
        ProcessCollector(namespace="kzpool", registry=self.registry)    # open fds vs the limit, memory, CPU


def metrics_for(app: "PoolApp", **options: Any) -> PoolMetrics:
    """The app's PoolMetrics: `app.metrics` when the composition root built one (`per_login_top_n` and
    `login_label` given here replace its own), else one built now."""
    existing = getattr(app, "metrics", None)
    if isinstance(existing, PoolMetrics):
        for name in ("per_login_top_n", "login_label"):
            if name in options:
                setattr(existing, name, options.pop(name))
        if options:
            raise TypeError(f"metrics_for: {sorted(options)} can only be set when the metrics are built")
        return existing
    metrics = PoolMetrics(app, **options)
    app.metrics = metrics   # type: ignore[attr-defined]  # until PoolApp builds it itself
    return metrics


def gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, labels=None if value is not None else list(labels))


def counter(name: str, doc: str, value: float | None = None, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value, labels=None if value is not None else list(labels))


RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The refusal reasons of the authorizers and gates (compliance/authorizer.py, standing.py,
# curtailment.py, work_gate.py, accreditation.py, pool/allowlist_auth.py).
REFUSAL_REASONS = ("unknown_login", "licence_expired", "licence_suspended", "licence_revoked",
                   "licence_not_yet_valid", "address_outside_datacentre", "address_not_allowed",
                   "registry_unavailable", "curtailed", "quota_used_up", "outside_schedule", "hourly_volume_used_up",
                   "location_attestation_failed", "accreditation_expired", "internal_error")


class PoolCollector(Collector):
    def __init__(self, metrics: PoolMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        app = self.metrics.app
        yield self._build_info(app)
        yield from self._connections(app)
        yield from self._shares(app)
        yield from self._jobs(app)
        yield from self._blocks(app)
        yield from self._nodes(app.source)
        yield from self._share_log(getattr(app.sink, "store", None))
        yield from self._logins()
        yield from self._histograms(app)
        yield from self._compliance(app)

    @staticmethod
    def _compliance(app: "PoolApp") -> Iterator[Metric]:
        refused = counter("kzpool_authorize_refusals", "Authorizations refused, by reason (licence, address, "
                          "curtailment, accreditation ...)", labels=["reason"])
        seen = app.server.stats.authorize_refused
        # Every known reason is exported from zero, so rate() and alerts see a series before the first one.
        for reason in sorted(set(REFUSAL_REASONS) | set(seen)):
            refused.add_metric([reason], seen.get(reason, 0))
        yield refused
        audit = getattr(app, "audit", None)
        if audit is not None:
            seq, _ = audit.head()
            yield gauge("kzpool_audit_head_seq", "Sequence number of the audit log's newest committed record", seq)
            yield counter("kzpool_audit_records_dropped", "Audit records dropped while the database was away "
                          "(each gap is itself recorded)", audit.dropped_total)
            yield gauge("kzpool_audit_queue_depth", "Audit records waiting to be committed", audit.queue_depth)
        totals = getattr(app, "ledger_totals", None)
        if totals is not None:
            ledger = gauge("kzpool_ledger_balance_satoshis", "Ledger balances in satoshis: the pool's and the "
                           "chain's accounts, miners summed by bucket (immature, available, frozen)",
                           labels=["account"])
            for account in sorted(set(totals) | {"miners:immature", "miners:available", "miners:frozen"}):
                ledger.add_metric([account], totals.get(account, 0))
            yield ledger
        rules = getattr(app, "rules", None)
        if rules is None:
            return
        latest = rules.attestor.latest
        state = gauge("kzpool_location_attestation", "This node's latest location verdict (1 for the current "
                      "one)", labels=["verdict", "mode"])
        state.add_metric([latest.verdict if latest else "pending", rules.attestor.mode], 1)
        yield state
        yield gauge("kzpool_node_may_work", "1 while this node may hand out work (0: attestation failed in "
                    "enforce mode)", 1 if rules.node_may_work() else 0)
        status = rules.accreditation.status
        acc = gauge("kzpool_accreditation_days_left", "Days until the pool's accreditation expires (Kazakhstan "
                    "time)", labels=["state"])
        acc.add_metric([status.state], status.days_left if status.days_left is not None else -1)
        yield acc
        yield gauge("kzpool_curtailed_logins", "Logins withheld from work now (curtailment, schedule, quota or "
                    "hourly volume)", rules.curtailment.blocked_count)
        yield from PoolCollector._hourly_volume(rules)

    @staticmethod
    def _hourly_volume(rules: Any) -> Iterator[Metric]:
        """This Kazakhstan hour's day-ahead allotments against the energy estimated from accepted
        work (compliance/hourly_volume.py): per data centre only, logins' own allotments counted."""
        volume = rules.curtailment.volume
        scopes = volume.scopes.values() if volume is not None else ()
        energy = gauge("kzpool_hour_energy_kwh", "This Kazakhstan hour's grid-power allotment of each data centre "
                       "with a day-ahead allotment (kind=allotted) and the energy estimated against it so far "
                       "(kind=used)", labels=["datacentre", "kind"])
        used_up = gauge("kzpool_hourly_volumes_used_up", "Day-ahead allotments whose volume for this hour is used "
                        "up (their logins get no work until the next hour)", labels=["scope"])
        counts = {"datacentre": 0, "login": 0}
        for v in scopes:
            counts[v.scope] = counts.get(v.scope, 0) + (1 if v.used_up else 0)
            if v.scope == "datacentre":
                energy.add_metric([v.target, "allotted"], v.allotted_kwh)
                energy.add_metric([v.target, "used"], v.used_kwh)
        for scope, n in sorted(counts.items()):
            used_up.add_metric([scope], n)
        yield energy
        yield used_up
        usage = rules.energy.hour_usage
        if usage is not None:
            yield gauge("kzpool_energy_estimate_age_seconds", "Age of the energy estimate the hourly volume rule "
                        "judges by (about energy.update_s when current)",
                        max(0.0, (rules.energy.clock() - usage.as_of).total_seconds()))

    @staticmethod
    def _build_info(app: "PoolApp") -> Metric:
        info = gauge("kzpool_build_info", "Version and configuration of the running pool (always 1)",
                     labels=["version", "mode", "source", "hasher"])
        info.add_metric([pool_version(), app.cfg.mode, app.source.name, app.hasher.name], 1)
        return info

    @staticmethod
    def _connections(app: "PoolApp") -> Iterator[Metric]:
        by_state = {s: 0 for s in State}
        workers = 0
        logins: set[str] = set()
        for conn in app.server.connections.values():
            by_state[conn.session.state] += 1
            workers += len(conn.session.workers)
            logins.update(acc.login for acc in conn.session.workers.values())
        states = gauge("kzpool_connections", "Open Stratum connections by session state", labels=["state"])
        for state, n in by_state.items():
            states.add_metric([state.name.lower()], n)
        yield states
        yield gauge("kzpool_workers_authorized", "Workers authorized on open connections", workers)
        yield gauge("kzpool_logins_connected", "Distinct logins with an authorized worker", len(logins))
        stats = app.server.stats
        yield counter("kzpool_connections_opened", "Stratum connections accepted", stats.connections_opened)
        closed = counter("kzpool_connections_closed", "Stratum connections closed, by reason", labels=["reason"])
        for reason, n in sorted(stats.connections_closed.items()):
            closed.add_metric([reason], n)
        yield closed
        yield gauge("kzpool_shares_in_flight", "Shares queued for hashing or awaiting storage",
                    stats.shares_in_flight)
        yield counter("kzpool_read_pauses", "Sessions not read for a while because max_shares_in_flight shares "
                      "awaited storage (overload back-pressure)", stats.read_pauses)

    @staticmethod
    def _shares(app: "PoolApp") -> Iterator[Metric]:
        stats = app.server.stats
        counts = {("rejected", r): 0 for r in REJECT_REASONS}
        counts[("accepted", "")] = 0
        counts.update(stats.shares)
        shares = counter("kzpool_shares", "Shares by result and reject reason", labels=["result", "reason"])
        for (result, reason), n in sorted(counts.items()):
            shares.add_metric([result, reason], n)
        yield shares
        yield counter("kzpool_accepted_difficulty", "Sum of the difficulty of accepted shares; "
                      "rate() * 2^32 is the pool's hashrate in hashes/s", stats.accepted_difficulty)

    def _jobs(self, app: "PoolApp") -> Iterator[Metric]:
        feed, now = app.jobs, time.time()
        yield counter("kzpool_tip_changes", "New chain tips seen by the job feed (clean jobs)", feed.tip_changes)
        if feed.template is None:
            return
        tpl = feed.template
        yield gauge("kzpool_template_age_seconds", "Seconds since the job feed got its last template",
                    max(0.0, now - feed.last_template_at))
        if self.metrics.timer.tip_at:
            yield gauge("kzpool_tip_age_seconds", "Seconds since the chain tip changed",
                        max(0.0, now - self.metrics.timer.tip_at))
        yield gauge("kzpool_template_height", "Height of the block the current template builds", tpl.height)
        yield gauge("kzpool_network_difficulty", "Network difficulty of the current template",
                    network_difficulty(tpl.bits))
        yield gauge("kzpool_template_transactions", "Transactions in the current template", len(tpl.transactions))
        yield gauge("kzpool_template_coinbase_value_satoshis", "Subsidy plus fees of the current template",
                    tpl.coinbasevalue)

    @staticmethod
    def _blocks(app: "PoolApp") -> Iterator[Metric]:
        book = app.sink.blocks
        yield counter("kzpool_blocks_found", "Shares that met the network target", app.server.stats.blocks_found)
        yield counter("kzpool_blocks_submitted", "Blocks submitted to the node(s)", book.submitted)
        yield counter("kzpool_blocks_accepted", "Submitted blocks at least one node accepted", book.accepted)
        yield counter("kzpool_blocks_rejected", "Submitted blocks no node accepted", book.rejected)
        tracker = getattr(app, "block_tracker", None)
        if tracker is not None:
            yield counter("kzpool_blocks_reorged_after_maturity", "Matured blocks later found off the best "
                          "chain (their credits taken back; a shortfall goes to pool:deficit)", tracker.deep_reorgs)
        if book.found:
            last = book.found[-1]
            yield gauge("kzpool_last_block_timestamp_seconds", "Unix time of the last block found", last.at)
            yield gauge("kzpool_last_block_height", "Height of the last block found", last.height)

    @staticmethod
    def _nodes(source: Any) -> Iterator[Metric]:
        health = getattr(source, "health", None)
        if health is None:          # the simulated chain runs in process: there is no node to watch
            return
        nodes = health()
        now = time.monotonic()
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": gauge("kzpool_node_up", "1 when the node answered its last call", labels=["node"]),
            "stale": gauge("kzpool_node_stale", "1 when the node's last template was behind the tip in use",
                           labels=["node"]),
            "failures": gauge("kzpool_node_consecutive_failures", "Failed calls since the node last answered",
                              labels=["node"]),
            "templates": counter("kzpool_node_templates", "Templates received from the node", labels=["node"]),
            "height": gauge("kzpool_node_height", "Height the node's last template builds", labels=["node"]),
            "ok_age": gauge("kzpool_node_last_ok_age_seconds", "Seconds since the node last answered",
                            labels=["node"]),
        }
        for n in nodes:
            families["up"].add_metric([n.name], 1 if n.healthy else 0)
            families["stale"].add_metric([n.name], 1 if n.stale else 0)
            families["failures"].add_metric([n.name], n.failures)
            families["templates"].add_metric([n.name], n.templates)
            if n.height >= 0:
                families["height"].add_metric([n.name], n.height)
            if n.last_ok_s > 0:
                families["ok_age"].add_metric([n.name], max(0.0, now - n.last_ok_s))
        yield from families.values()

    @staticmethod
    def _share_log(store: Any) -> Iterator[Metric]:
        if store is None or not hasattr(store, "queue_depth"):
            return      # no share log wired (tests, or a pool that does not store shares)
        yield gauge("kzpool_sharelog_queue_depth", "Accepted shares waiting to be durable", store.queue_depth)
        yield gauge("kzpool_sharelog_last_commit_seconds", "Duration of the share log's last commit",
                    store.last_commit_latency_s)
        if hasattr(store, "spilling"):
            yield gauge("kzpool_sharelog_spilling", "1 while the database is unavailable and shares go to "
                        "the spill file", 1 if store.spilling else 0)
        if hasattr(store, "batches_committed"):
            yield counter("kzpool_sharelog_commits", "Share-log batches committed to the database",
                          store.batches_committed)

    def _logins(self) -> Iterator[Metric]:
        m = self.metrics
        if m.per_login_top_n <= 0:
            return
        family = gauge("kzpool_login_hashrate_hps", f"Hashrate of the top {m.per_login_top_n} logins over the "
                       f"last {m.work.window_s:g} s, from accepted shares", labels=["login"])
        for login, hps in m.work.top(m.per_login_top_n):
            family.add_metric([m.login_label(login)], hps)
        yield family

    def _histograms(self, app: "PoolApp") -> Iterator[Metric]:
        latencies = app.server.stats.submit_latencies
        taken = latencies[:MAX_DRAIN]
        del latencies[:len(taken)]
        for seconds in taken:
            self.metrics.submit_latency.observe(seconds)
        yield from self.metrics.submit_latency.collect()
        store = getattr(app.sink, "store", None)
        commits = getattr(store, "commit_latencies", None)
        if commits is not None:
            taken = commits[:MAX_DRAIN]
            del commits[:len(taken)]
            for seconds in taken:
                self.metrics.sharelog_commit.observe(seconds)
            yield from self.metrics.sharelog_commit.collect()
        rpc_stats = getattr(app.source, "rpc_stats", None)
        if rpc_stats is not None:
            errors = counter("kzpool_node_rpc_errors", "Failed Bitcoin Core RPC calls by node, method and error",
                             labels=["node", "method", "error"])
            for node, stats in rpc_stats():
                taken = stats.latencies[:MAX_DRAIN]
                del stats.latencies[:len(taken)]
                for method, seconds in taken:
                    self.metrics.node_rpc_latency.labels(node, method).observe(seconds)
                for (method, error), n in sorted(stats.errors.items()):
                    errors.add_metric([node, method, error], n)
            yield errors
            yield from self.metrics.node_rpc_latency.collect()
        yield from self.metrics.timer.tip_to_notify.collect()
        yield from self.metrics.timer.fanout.collect()
