"""The composition root: the one place that builds every component from the config and wires them."""
from __future__ import annotations

import asyncio
import logging
import signal

from stratum.cost import CostLimits
from stratum.extranonce import Extranonce1Allocator
from stratum.interfaces import Authorizer, ShareHasher
from stratum.server import Listener, ServerLimits, StratumServer
from stratum.session import SessionConfig
from stratum.vardiff import VardiffConfig

from .address import address_to_script
from .config import PoolConfig, redacted
from .allowlist_auth import AllowlistAuthorizer
from .jobs import JobFeed
from .logsetup import active_anonymiser
from .metrics import PoolMetrics
from .metrics_http import HttpServer, start_metrics_server
from .admin import start_admin_server
from .shares import PoolShareSink
from .template import TemplateSource

log = logging.getLogger("kzpool.app")

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


def session_config(cfg: PoolConfig, start: float, minimum: float) -> SessionConfig:
    s = cfg.stratum
    return SessionConfig(
        extranonce2_size=s.extranonce2_size, version_mask=int(s.version_mask, 16), start_difficulty=start,
        vardiff=VardiffConfig(target_s=s.target_share_s, retarget_s=s.retarget_s,
                              hysteresis=s.vardiff_hysteresis, decline_after_s=s.decline_after_s,
                              min_difficulty=minimum, max_difficulty=s.max_difficulty),
        ntime_future_s=s.ntime_future_s, max_workers=s.max_workers_per_connection,
        max_line_bytes=s.max_line_bytes,
        costs=CostLimits(s.cost_soft_limit, s.cost_hard_limit, s.cost_half_life_s))


def build_listeners(cfg: PoolConfig) -> list[Listener]:
    s = cfg.stratum
    out = [Listener(s.host, s.port, session_config(cfg, s.start_difficulty, s.min_difficulty),
                    s.tls_cert or None, s.tls_key or None)]
    for p in s.extra_ports:
        out.append(Listener(p.host or s.host, p.port, session_config(cfg, p.start_difficulty, p.min_difficulty),
                            s.tls_cert if p.tls else None, s.tls_key if p.tls else None))
    return out


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


def build_authorizer(cfg: PoolConfig) -> Authorizer:
    if cfg.auth.authorizer == "allowlist":
        return AllowlistAuthorizer(cfg.auth.logins, cfg.auth.allowed_networks)
    return AllowlistAuthorizer.demo()


def payout_script(cfg: PoolConfig) -> bytes:
    if cfg.coinbase.payout_script_hex:
        return bytes.fromhex(cfg.coinbase.payout_script_hex)
    return address_to_script(cfg.coinbase.payout_address, cfg.chain.network)


class PoolApp:
    def __init__(self, cfg: PoolConfig, source: TemplateSource | None = None,
                 authorizer: Authorizer | None = None) -> None:
        self.cfg = cfg
        self.source = source or build_source(cfg)
        self.authorizer = authorizer or build_authorizer(cfg)
        self.hasher = select_hasher()
        self.sink = PoolShareSink(self.source)
        s = cfg.stratum
        self.server = StratumServer(
            build_listeners(cfg),
            ServerLimits(max_sessions=s.max_sessions, idle_timeout_s=s.idle_timeout_s,
                         send_stall_timeout_s=s.send_stall_timeout_s, shutdown_timeout_s=s.shutdown_timeout_s,
                         write_high_water_bytes=s.write_high_water_bytes, sweep_interval_s=s.sweep_interval_s),
            self.authorizer, self.hasher, self.sink, Extranonce1Allocator(s.extranonce1_size))
        self.jobs = JobFeed(self.source, self.server.broadcast_job, payout_script(cfg), cfg.coinbase.tag.encode(),
                            s.extranonce1_size, s.extranonce2_size, version_mask=int(s.version_mask, 16))
        anonymiser = active_anonymiser()
        self.metrics = PoolMetrics(self, per_login_top_n=cfg.metrics.per_login_top_n,
                                   login_label=anonymiser.pseudonym if anonymiser else str)
        self.endpoints: list[HttpServer] = []
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        log.info("pool_start mode=%s source=%s hasher=%s config=%s", self.cfg.mode, self.source.name,
                 self.hasher.name, redacted(self.cfg))
        if self.cfg.node.source == "simnet":
            log.warning("simulated_chain%s", SIMNET_BANNER)
        await self.server.start()
        self.jobs.start()

    async def start_endpoints(self) -> None:
        """The operator's endpoints: /metrics for Prometheus, /status for `kzpool status`."""
        if self.cfg.metrics.enabled:
            self.endpoints.append(await start_metrics_server(self, self.cfg.metrics.host, self.cfg.metrics.port))
        if self.cfg.admin.enabled:
            self.endpoints.append(await start_admin_server(self, self.cfg.admin.host, self.cfg.admin.port))

    async def stop(self) -> None:
        await self.jobs.stop()
        await self.server.shutdown()
        await self.sink.drain()
        await self.source.close()
        for endpoint in self.endpoints:      # last: Prometheus and `kzpool status` see the shutdown
            endpoint.close()
        self.endpoints.clear()
        log.info("pool_stop")
        self._stopped.set()

    async def run_until_signal(self) -> None:
        await self.start()
        await self.start_endpoints()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()
