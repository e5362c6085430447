"""The composition root: the one place that builds every component from the config and wires them."""
from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import json
import logging
import signal

from dataclasses import dataclass
from pathlib import Path

from compliance import audit_events
from compliance.audit_events import AuditedAuthorizer
from compliance.audit_keys import load_or_create_signing_key
from compliance.audit_log import AuditLog
from compliance.authorizer import RegistryAuthorizer
from compliance.backoff import RefusalBackoff
from compliance.demo_registry import seed_demo_registry
from compliance.pii import load_pii_box
from compliance.registry import LicenceRegistry
from compliance.watcher import LicenceWatcher
from compliance.work_gate import GatedAuthorizer
from payouts.block_tracker import BlockTracker
from payouts.ledger import Ledger, parse_miner_account
from payouts.pps import PpsCreditor, TemplateRates
from payouts.settings import payout_settings
from stratum.jobs import Job
from stratum.extranonce import Extranonce1Allocator
from stratum.interfaces import Authorizer, ShareHasher
from stratum.server import StratumServer

from .address import address_to_script
from .config import PoolConfig, redacted
from .allowlist_auth import AllowlistAuthorizer
from .db import Database
from .jobs import JobFeed
from .listeners import build_listeners, extranonce1_prefix, server_limits
from .logsetup import active_anonymiser
from .metrics import PoolMetrics
from .operating_rules import OperatingRules
from .metrics_http import HttpServer, start_metrics_server
from .admin import start_admin_server
from .sharelog import ShareLog
from .shares import BlockEvent, PoolShareSink
from .template import TemplateSource
from .template_hub import RelayedTemplateSource

log = logging.getLogger("kzpool.app")
try:
    __version__ = importlib.metadata.version("kzpool")
except importlib.metadata.PackageNotFoundError:      # running from a checkout without installing
    __version__ = "0+checkout"

SIMNET_BANNER = """
  ************************************************************************
  *  kzpool: the chain is SIMULATED (simnet). Blocks found here are not   *
  *  Bitcoin blocks and pay nothing. Point node.source at bitcoind for a  *
  *  real chain.                                                          *
  ************************************************************************"""


def select_hasher() -> ShareHasher:
    try:
        from .native import select_hasher as native_select
    except ImportError:
        from .validation import PythonShareHasher
        log.warning("share_hasher name=python reason=native_module_missing")
        return PythonShareHasher()
    return native_select()


def build_source(cfg: PoolConfig) -> TemplateSource:
    if cfg.node.source == "simnet":
        from .simnet import SimulatedChain
        return SimulatedChain(bits=int(cfg.simnet.bits, 16), tx_count=cfg.simnet.transactions,
                              refresh_s=cfg.simnet.refresh_s)
    from .bitcoind import BitcoindSource
    n = cfg.node
    return BitcoindSource(rpc_urls=list(n.rpc_urls), cookie_file=n.rpc_cookie_file or None,
                          user=n.rpc_user or None, password=n.rpc_password or None,
                          zmq_hashblock=n.zmq_hashblock or None, poll_interval_s=n.poll_interval_s,
                          refresh_s=n.refresh_s, timeout_s=n.rpc_timeout_s)


def payout_script(cfg: PoolConfig) -> bytes:
    if cfg.coinbase.payout_script_hex:
        return bytes.fromhex(cfg.coinbase.payout_script_hex)
    return address_to_script(cfg.coinbase.payout_address, cfg.chain.network)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is worker `index` of `kzpool run --workers N`; templates come from the hub."""
    index: int
    hub_path: str


class PoolApp:
    def __init__(self, cfg: PoolConfig, source: TemplateSource | None = None,
                 authorizer: Authorizer | None = None, worker: WorkerRole | None = None) -> None:
        self.cfg = cfg
        self.worker = worker
        if worker is not None:
            source = RelayedTemplateSource(worker.hub_path, worker.index)
        self.source = source or build_source(cfg)
        self.db = Database(cfg.database.url, background_checkpoint=True)
        a = cfg.audit
        # Production refuses to start without its key; the embedded default makes one on first start.
        self.audit_key = load_or_create_signing_key(a.key_file, create_if_missing=cfg.mode != "production")
        self.audit = AuditLog(self.db, self.audit_key, checkpoint_every=a.checkpoint_every,
                              checkpoint_interval_s=a.checkpoint_interval_s, max_batch=a.max_batch,
                              commit_interval_s=a.commit_interval_s, max_queue=a.max_queue)
        spill = Path(cfg.database.spill_path)
        if worker is not None:      # one spill file per process: replay order is per writer
            spill = spill.with_name(f"{spill.name}.w{worker.index}")
        self.share_log = ShareLog(self.db, spill)
        self.registry: LicenceRegistry | None = None
        self.watcher: LicenceWatcher | None = None
        self.rules = OperatingRules(cfg, self.db, self.audit.record, lambda: self.server,
                                    energy_writer=worker is None or worker.index == 0)
        inner = authorizer or self._build_authorizer()
        self.authorizer = GatedAuthorizer(inner, self.rules.auth_gate, audit=self.audit.record,
                                          backoff=self._refusal_backoff())
        self.hasher = select_hasher()
        self.sink = PoolShareSink(self.source, store=self.share_log)
        s = cfg.stratum
        still_valid = getattr(inner, "is_still_valid", lambda login: True)
        work = self.rules.work_gate
        self.server = StratumServer(
            build_listeners(cfg, reuse_port=worker is not None), server_limits(cfg), self.authorizer, self.hasher,
            self.sink, Extranonce1Allocator(s.extranonce1_size, extranonce1_prefix(cfg, worker and worker.index)),
            still_authorized=lambda account: still_valid(account.login) and work.work_allowed(account.login),
            gets_work=lambda account: work.work_allowed(account.login))
        self.jobs = JobFeed(self.source, self._publish_job, payout_script(cfg), cfg.coinbase.tag.encode(),
                            s.extranonce1_size, s.extranonce2_size, version_mask=int(s.version_mask, 16),
                            extra_push=self.audit.anchor_push)
        self.sink.on_block.append(self._block_found)
        self._build_payout_tracking()
        anonymiser = active_anonymiser()
        self.metrics = PoolMetrics(self, per_login_top_n=cfg.metrics.per_login_top_n,
                                   login_label=anonymiser.pseudonym if anonymiser else str)
        self.endpoints: list[HttpServer] = []
        self._stopped = asyncio.Event()

    def _build_authorizer(self) -> Authorizer:
        cfg = self.cfg
        if cfg.auth.authorizer == "allowlist":
            return AuditedAuthorizer(AllowlistAuthorizer(cfg.auth.logins, cfg.auth.allowed_networks), self.audit)
        c = cfg.compliance
        demo_key = str(Path(cfg.database.spill_path).parent / "pii-demo.key")
        pii = load_pii_box(c.pii_key_file, allow_demo_key=cfg.mode == "demo", demo_key_path=demo_key)
        self.registry = LicenceRegistry(self.db, pii, audit=self.audit.record)
        authorizer = RegistryAuthorizer(self.registry, c.require_datacentre_ip, audit=self.audit.record,
                                        backoff=self._refusal_backoff())
        self.watcher = LicenceWatcher(self.registry, self._licence_invalid, interval_s=c.licence_poll_s,
                                      full_scan_s=c.licence_full_scan_s, authorizer=authorizer)
        return authorizer

    def _build_payout_tracking(self) -> None:
        """Found blocks recorded and followed to maturity (credits) or orphaning (reversal); PPS/FPPS
        credited from stored shares. Every process records its own blocks; one process (the single
        one, or worker 0) runs the maturity and PPS loops."""
        p = payout_settings(self.cfg)
        self.ledger = Ledger(self.db, audit=self.audit.record)
        confirmations = getattr(self.source, "confirmations", None)
        self.block_tracker = BlockTracker(
            self.db, self.ledger, confirmations, scheme=p.scheme, fee_bps=p.fee_bps,
            pplns_window_factor=p.pplns_window_factor, maturity=p.maturity, share_wait_s=p.share_wait_s,
            interval_s=p.tracker_interval_s, audit=self.audit.record)
        self.sink.on_block.append(self.block_tracker.on_block)
        self.pps: PpsCreditor | None = None
        if p.scheme in ("pps", "fpps"):
            self.pps = PpsCreditor(
                self.db, self.ledger, TemplateRates(lambda: self.jobs.template, fpps=p.scheme == "fpps",
                                                    fee_window=p.fpps_fee_window),
                fee_bps=p.fee_bps, scheme=p.scheme, lag_s=p.pps_lag_s, recheck_s=p.pps_recheck_s,
                interval_s=p.pps_interval_s,
                settled=lambda: not self.share_log.spilling and self.share_log.spill_bytes == 0)
        self._runs_payout_loops = (self.worker is None or self.worker.index == 0) and confirmations is not None
        self.ledger_totals: dict[str, int] = {}     # account (miners summed by bucket) -> satoshis
        self._ledger_task: asyncio.Task[None] | None = None

    async def _refresh_ledger_totals(self, interval_s: float = 30.0) -> None:
        """Ledger totals for the metrics (the collector is synchronous; the ledger is in the database)."""
        while True:
            try:
                totals: dict[str, int] = {}
                for account, balance in (await self.ledger.balances()).items():
                    miner = parse_miner_account(account)
                    key = f"miners:{miner[1]}" if miner else account
                    totals[key] = totals.get(key, 0) + balance.amount
                self.ledger_totals = totals
            except Exception:
                log.exception("ledger_totals_failed")
            await asyncio.sleep(interval_s)

    def _refusal_backoff(self) -> RefusalBackoff:
        c = self.cfg.compliance
        return RefusalBackoff(c.auth_backoff_base_s, c.auth_backoff_max_s, c.auth_backoff_forget_s)

    def _publish_job(self, job: Job) -> int:
        # A node whose location attestation failed in enforce mode hands out no work at all.
        return self.server.broadcast_job(job) if self.rules.node_may_work() else 0

    def _block_found(self, event: BlockEvent, block: bytes) -> None:
        self.audit.record(audit_events.BLOCK_FOUND, audit_events.block_found(
            event.height, event.hash_display, event.worker, audit_events.script_sig_of_block(block), event.outcomes))

    def _licence_invalid(self, login: str, text: str) -> None:
        # Every session of that login is told why and disconnected; in-flight shares are refused by
        # the server's still_authorized check.
        count = self.server.show_message(lambda account: account.login == login, text, disconnect=True)
        log.info("licence_invalid_sessions_closed sessions=%d", count)

    async def _prepare_database(self) -> None:
        if self.cfg.mode == "demo" and self.worker is None:
            await self.db.upgrade()            # the embedded default keeps its own schema current
        else:
            await self.db.check_schema()       # production: `kzpool db upgrade` is the operator's step

    async def prepare_storage(self) -> None:
        """The supervisor of `--workers N` runs this once before starting them: migrations (demo) or
        the schema check, and the demo registry, so workers never race each other to do it."""
        await self._prepare_database()
        if self.registry is not None and self.cfg.mode == "demo":
            await self.audit.start()
            await seed_demo_registry(self.registry)
            await self.audit.close()
        await self.db.close()

    async def start(self) -> None:
        log.info("pool_start mode=%s source=%s hasher=%s database=%s config=%s", self.cfg.mode,
                 self.source.name, self.hasher.name, self.db.safe_url, json.dumps(redacted(self.cfg)))
        if self.cfg.node.source == "simnet":
            log.warning("simulated_chain%s", SIMNET_BANNER)
        await self._prepare_database()
        self.db.start_checkpointer()
        await self.audit.start()
        self.audit.record(audit_events.POOL_START, audit_events.pool_start(
            redacted(self.cfg), version=__version__, key_id=self.audit_key.key_id))
        if self.registry is not None and self.cfg.mode == "demo" and self.worker is None:
            await seed_demo_registry(self.registry)
        await self.share_log.start()
        self._ledger_task = asyncio.create_task(self._refresh_ledger_totals(), name="ledger-totals")
        if self._runs_payout_loops:
            self.block_tracker.start()
            if self.pps is not None:
                self.pps.start()
        if self.watcher is not None:
            await self.watcher.start()         # the baseline exists before the first miner connects
        await self.rules.start()
        await self.audit.flush()               # so the very first job's coinbase anchors a real head
        await self.server.start()
        if self.worker is not None:
            await self._start_worker_endpoints()
        self.jobs.start()

    async def _start_worker_endpoints(self) -> None:
        """A worker's /metrics on a loopback port of its own, scraped by the supervisor; worker 0 also
        answers `kzpool status` on the configured admin port."""
        assert isinstance(self.source, RelayedTemplateSource)
        metrics = await start_metrics_server(self, "127.0.0.1", 0)
        self.endpoints.append(metrics)
        self.source.metrics_port = metrics.port
        if self.cfg.admin.enabled and self.worker is not None and self.worker.index == 0:
            self.endpoints.append(await start_admin_server(self, self.cfg.admin.host, self.cfg.admin.port))

    async def start_endpoints(self) -> None:
        """The operator's endpoints: /metrics for Prometheus, /status for `kzpool status`."""
        if self.worker is not None:
            return                            # started with the server; the supervisor serves /metrics
        if self.cfg.metrics.enabled:
            self.endpoints.append(await start_metrics_server(self, self.cfg.metrics.host, self.cfg.metrics.port))
        if self.cfg.admin.enabled:
            self.endpoints.append(await start_admin_server(self, self.cfg.admin.host, self.cfg.admin.port))

    async def stop(self) -> None:
        await self.jobs.stop()
        await self.server.shutdown()
        await self.sink.drain()
        if self._ledger_task is not None:
            self._ledger_task.cancel()
        if self._runs_payout_loops:
            await self.block_tracker.stop()
            if self.pps is not None:
                await self.pps.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        await self.rules.stop()
        await self.share_log.close()           # every acknowledged share is durable before exit
        self.audit.record(audit_events.POOL_STOP, audit_events.pool_stop("stop"))
        await self.audit.close()               # commits the queue and signs the tail
        await self.source.close()
        await self.db.close()
        for endpoint in self.endpoints:      # last: Prometheus and `kzpool status` see the shutdown
            endpoint.close()
        self.endpoints.clear()
        log.info("pool_stop")
        self._stopped.set()

    async def run_until_signal(self) -> None:
        # Handlers first: a SIGTERM while the pool is still starting (systemd stopping a unit that
        # has just been started) must become an ordered stop, not the default kill.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await self.start_endpoints()
        # Everything built at start lives for the whole run: keep it out of the collector's scans,
        # and collect young objects less often. The load benchmark measured p99 submit latency at
        # 10k shares/s falling from ~53 ms to ~11 ms (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        await stop.wait()
        await self.stop()
