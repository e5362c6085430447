"""Stratum listeners and per-connection session settings from the pool's config."""
from __future__ import annotations

from stratum.cost import CostLimits
from stratum.server import Listener, ServerLimits
from stratum.session import SessionConfig
from stratum.vardiff import VardiffConfig

from .config import PoolConfig


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


def build_listeners(cfg: PoolConfig, reuse_port: bool = False) -> list[Listener]:
    s = cfg.stratum
    out = [Listener(s.host, s.port, session_config(cfg, s.start_difficulty, s.min_difficulty),
                    s.tls_cert or None, s.tls_key or None, reuse_port)]
    for p in s.extra_ports:
        out.append(Listener(p.host or s.host, p.port, session_config(cfg, p.start_difficulty, p.min_difficulty),
                            s.tls_cert if p.tls else None, s.tls_key if p.tls else None, reuse_port))
    return out


def extranonce1_prefix(cfg: PoolConfig, worker_index: int | None) -> bytes:
    """node id, then the worker's index when several processes share the port: no two processes of
    any node on one database ever hand out the same extranonce1."""
    prefix = bytes([cfg.node_id])
    if worker_index is not None:
        prefix += bytes([worker_index])
    return prefix


def server_limits(cfg: PoolConfig) -> ServerLimits:
    s = cfg.stratum
    return ServerLimits(max_sessions=s.max_sessions, idle_timeout_s=s.idle_timeout_s,
                        send_stall_timeout_s=s.send_stall_timeout_s, shutdown_timeout_s=s.shutdown_timeout_s,
                        write_high_water_bytes=s.write_high_water_bytes, sweep_interval_s=s.sweep_interval_s,
                        max_shares_in_flight=s.max_shares_in_flight)
