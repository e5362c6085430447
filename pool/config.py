"""One typed, frozen config object, built once at start from TOML plus `--set section.key=value`.

The dataclass defaults ARE the embedded demo default (config/demo.toml spells them out, and a test
keeps the two equal). Unknown keys fail at start with the key's name; a value of the wrong type
fails with the key and the expected type. Secrets may come from the environment instead of the file.
"""
from __future__ import annotations

import ipaddress
import keyword
import os
import re
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from payouts.settings import PayoutSettings, PayoutSettingsError


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PortConfig:
    port: int
    host: str = ""                      # empty: the [stratum] host
    start_difficulty: float = 0.001
    min_difficulty: float = 1e-8        # CPU and hobby miners may go this low, per port
    tls: bool = False


@dataclass(frozen=True, slots=True)
class StratumConfig:
    host: str = "0.0.0.0"
    port: int = 3333
    # A 2-core CPU miner does a few MH/s: difficulty 0.001 (~4.3 M hashes) is met in about a second.
    start_difficulty: float = 0.001
    min_difficulty: float = 1e-8
    max_difficulty: float = 1e15
    extranonce1_size: int = 4
    extranonce2_size: int = 8
    version_mask: str = "1fffe000"      # BIP320 general-purpose bits
    target_share_s: float = 10.0        # vardiff: seconds per share per connection
    retarget_s: float = 60.0
    vardiff_hysteresis: float = 0.25
    decline_after_s: float = 60.0       # a quiet miner is lowered after this long
    ntime_future_s: int = 7000
    max_line_bytes: int = 16 * 1024
    max_workers_per_connection: int = 256
    max_sessions: int = 100_000
    idle_timeout_s: float = 600.0
    send_stall_timeout_s: float = 30.0
    write_high_water_bytes: int = 256 * 1024   # unsent bytes per connection before it counts as stalled
    sweep_interval_s: float = 5.0              # how often idle, stall and vardiff-decline timers run
    cost_soft_limit: float = 50.0
    cost_hard_limit: float = 200.0
    cost_half_life_s: float = 60.0
    shutdown_timeout_s: float = 10.0
    max_shares_in_flight: int = 20_000  # shares waiting for storage before the pool stops reading submits
    tls_cert: str = ""
    tls_key: str = ""
    extra_ports: tuple[PortConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeConfig:
    source: str = "simnet"              # simnet | bitcoind
    rpc_urls: tuple[str, ...] = ("http://127.0.0.1:8332",)
    rpc_cookie_file: str = ""
    rpc_user: str = ""
    rpc_password: str = ""              # or KZPOOL_RPC_PASSWORD in the environment
    rpc_timeout_s: float = 30.0
    zmq_hashblock: str = ""
    poll_interval_s: float = 0.2
    refresh_s: float = 30.0


@dataclass(frozen=True, slots=True)
class SimnetConfig:
    # Easy enough that a 2-core CPU miner finds a block every minute or so.
    bits: str = "1d0fffff"        # target 2**228: ~2.7e8 hashes, about a minute at a few MH/s
    refresh_s: float = 30.0
    transactions: int = 3


@dataclass(frozen=True, slots=True)
class ChainConfig:
    network: str = "regtest"            # mainnet | testnet | testnet4 | signet | regtest


@dataclass(frozen=True, slots=True)
class CoinbaseConfig:
    # The demo pays to a well-known regtest address; production must set its own.
    payout_address: str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    payout_script_hex: str = ""
    tag: str = "/kzpool/"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite+aiosqlite:///./var/kzpool.sqlite3"
    spill_path: str = "./var/share-spill.log"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # "registry": licensed miners from the licence registry (the embedded default seeds a demo data
    # centre covering loopback and the login `demo`). "allowlist": `logins` from `allowed_networks`
    # (CIDRs), for a pool that has no registry yet.
    authorizer: str = "registry"
    logins: tuple[str, ...] = ()
    allowed_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ComplianceConfig:
    require_datacentre_ip: bool = True  # refuse miners outside their data centre's registered IP ranges
    pii_key_file: str = ""              # 32-byte key (raw, hex or base64); KZPOOL_PII_KEY overrides it;
                                        # empty in demo mode: ./var/pii-demo.key is created
    licence_poll_s: float = 1.0         # how often licence changes are read; must stay <= 2 s (5 s rule)
    licence_full_scan_s: float = 300.0  # safety-net full read of every licence
    auth_backoff_base_s: float = 1.0    # refused addresses wait 1, 2, 4 ... s before their next answer
    auth_backoff_max_s: float = 60.0
    auth_backoff_forget_s: float = 600.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    key_file: str = "./var/audit-ed25519.pem"   # Ed25519 private key, 0600; demo creates it, production
                                                # refuses to start without it (`kzpool audit keygen`)
    checkpoint_every: int = 100         # records between signed checkpoints
    checkpoint_interval_s: float = 60.0 # longest time records stay unsigned
    commit_interval_s: float = 0.05     # at most one audit transaction per interval (shares come first)
    max_batch: int = 250                # records per transaction
    max_queue: int = 250_000            # queued while the database is down; beyond: an audit_gap record


@dataclass(frozen=True, slots=True)
class AccreditationConfig:
    number: str = ""                    # the pool's accreditation certificate; "" = none (demo)
    issued: str = ""                    # YYYY-MM-DD
    expires: str = ""                   # first day in Kazakhstan with no accreditation (exclusive)
    authority: str = ""
    warn_days: int = 30                 # warn this many days before expiry


@dataclass(frozen=True, slots=True)
class LocationConfig:
    mode: str = "warn"                  # enforce | warn: enforce withholds work and payouts on a fail
    check_interval_s: float = 3600.0
    mmdb_path: str = ""                 # GeoLite2-Country or DB-IP lite country MMDB
    delegated_stats_path: str = ""      # RIR delegated-stats file (KZ allocations)
    node_id: str = ""                   # "" = node-<node_id>
    public_addresses: tuple[str, ...] = ()
    datacentre: str = ""                # this node's data centre in the registry
    payout_window_s: float = 604800.0   # "produced shares in the payout window"
    activity_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class EquipmentConfig:
    model: str = ""
    count: int = 1
    j_per_th: float = 30.0


@dataclass(frozen=True, slots=True)
class PowerProfileConfig:
    id: str = ""                        # data centre id (in electricity.datacentres)
    login: str = ""                     # miner login (in electricity.miners)
    hours: str = ""                     # Kazakhstan hours, e.g. "22-7"; "" inherits
    quota_kwh: float = 0.0              # monthly quota; 0 = none
    equipment: tuple[EquipmentConfig, ...] = ()
    power_sources: tuple[str, ...] = ()
    avg_price_tenge: float = 0.0        # 0 = unknown (counts as the cheapest band for the fee)
    metered: bool = True


@dataclass(frozen=True, slots=True)
class ElectricityConfig:
    default_hours: str = "0-24"
    default_j_per_th: float = 30.0
    datacentres: tuple[PowerProfileConfig, ...] = ()
    miners: tuple[PowerProfileConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class CurtailmentConfig:
    grace_s: float = 30.0               # from client.show_message to the disconnect
    poll_s: float = 1.0                 # <= 2 s so orders reach miners within 5 s
    # Seconds of each day-ahead hour's allotted power held back for the hourly volume rule's latency
    # (energy.update_s + poll_s): work stops at allowed_kw x (3600 - this) / 3600 kWh. 0..1800.
    volume_reserve_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FeeRateConfig:
    from_: str = ""                     # TOML key `from`: YYYY-MM-DD
    until: str = ""                     # "" = open-ended
    source: str = "any"
    tenge_per_kwh: float = 0.0
    price_from: float = 0.0
    price_until: float = 0.0
    note: str = ""


@dataclass(frozen=True, slots=True)
class EnergyConfig:
    update_s: float = 60.0              # energy accounting interval
    recompute_hours: int = 3            # hours recomputed each run (late spill replays)
    fee_rates: tuple[FeeRateConfig, ...] = ()   # empty: the shipped table (2022, 2023 bands, 2024+)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"
    format: str = "kv"                  # kv | json
    anonymise: bool = False             # logins, workers and miners' IPs as per-process salted pseudonyms
    repeat_interval_s: float = 60.0     # one line per upstream error (node, ZMQ, template source) per interval


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"             # Prometheus scrapes /metrics here; keep it off the Internet
    port: int = 9108
    per_login_top_n: int = 10           # per-login hashrate series exported; 0: none (bounded cardinality)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    enabled: bool = True
    host: str = "127.0.0.1"             # GET /status for `kzpool status`; loopback addresses only
    port: int = 9109


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    # uid 0 is refused unless this (or `kzpool run --allow-root`). The embedded demo allows it so the
    # one-command demo works on a fresh machine where the shell is root; production sets false.
    allow_root: bool = True
    workers: int = 1                    # stratum worker processes sharing the port (SO_REUSEPORT)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    mode: str = "demo"                  # demo | production
    # This machine's number among pool nodes sharing one database: the first byte of every
    # extranonce1 it hands out, so two nodes never give miners the same coinbase space.
    node_id: int = 0
    stratum: StratumConfig = field(default_factory=StratumConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    simnet: SimnetConfig = field(default_factory=SimnetConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    coinbase: CoinbaseConfig = field(default_factory=CoinbaseConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    compliance: ComplianceConfig = field(default_factory=ComplianceConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    accreditation: AccreditationConfig = field(default_factory=AccreditationConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    electricity: ElectricityConfig = field(default_factory=ElectricityConfig)
    curtailment: CurtailmentConfig = field(default_factory=CurtailmentConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    payouts: PayoutSettings = field(default_factory=PayoutSettings)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)

    def validate(self) -> "PoolConfig":
        choices = {"mode": (self.mode, {"demo", "production"}),
                   "node.source": (self.node.source, {"simnet", "bitcoind"}),
                   "chain.network": (self.chain.network, {"mainnet", "testnet", "testnet4", "signet", "regtest"}),
                   "auth.authorizer": (self.auth.authorizer, {"registry", "allowlist"}),
                   "log.format": (self.log.format, {"kv", "json"}),
                   "location.mode": (self.location.mode, {"warn", "enforce"})}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key} = {value!r}: expected one of {sorted(allowed)}")
        if not 0 <= self.node_id <= 255:
            raise ConfigError("node_id must be 0..255")
        if not 1 <= self.process.workers <= 64:
            raise ConfigError("process.workers must be 1..64")
        s = self.stratum
        if self.process.workers > 1 and s.extranonce1_size < 3:
            raise ConfigError("stratum.extranonce1_size must be at least 3 with several workers")
        if not 0 < s.min_difficulty <= s.start_difficulty <= s.max_difficulty:
            raise ConfigError("stratum: need 0 < min_difficulty <= start_difficulty <= max_difficulty")
        if not 2 <= s.extranonce1_size <= 8 or not 2 <= s.extranonce2_size <= 16:
            raise ConfigError("stratum.extranonce1_size must be 2..8 and extranonce2_size 2..16")
        try:
            int(s.version_mask, 16)
            int(self.simnet.bits, 16)
        except ValueError:
            raise ConfigError("stratum.version_mask and simnet.bits must be hex") from None
        if bool(s.tls_cert) != bool(s.tls_key):
            raise ConfigError("stratum.tls_cert and stratum.tls_key go together")
        if not self.coinbase.payout_script_hex:
            from .address import AddressError, address_to_script
            try:
                address_to_script(self.coinbase.payout_address, self.chain.network)
            except AddressError as exc:
                raise ConfigError(f"coinbase.payout_address: {exc}") from None
        if not 0 < self.curtailment.poll_s <= 2:
            raise ConfigError("curtailment.poll_s must be in (0, 2]: orders reach miners within 5 s")
        if not 0 <= self.curtailment.volume_reserve_s <= 1800:
            raise ConfigError("curtailment.volume_reserve_s must be in [0, 1800] seconds of the allotted power")
        if self.mode == "production" and not self.accreditation.number:
            raise ConfigError("accreditation.number is required in production mode")
        try:
            self.payouts.validate()
        except PayoutSettingsError as exc:
            raise ConfigError(str(exc)) from None
        from compliance.accreditation import accreditation_from_settings
        try:
            accreditation_from_settings(self.accreditation)     # the same rules the pool runs by
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not 0 < self.compliance.licence_poll_s <= 2:
            raise ConfigError("compliance.licence_poll_s must be in (0, 2]: revocations reach miners within 5 s")
        if self.auth.authorizer == "allowlist":
            if not self.auth.logins or not self.auth.allowed_networks:
                raise ConfigError("auth.authorizer = 'allowlist' needs auth.logins and auth.allowed_networks")
            for net in self.auth.allowed_networks:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigError(f"auth.allowed_networks: {net!r} is not a network") from None
        if self.metrics.per_login_top_n < 0:
            raise ConfigError("metrics.per_login_top_n must be >= 0 (0 exports no per-login series)")
        try:
            admin_local = ipaddress.ip_address(self.admin.host).is_loopback
        except ValueError:
            admin_local = self.admin.host == "localhost"
        if not admin_local:
            raise ConfigError(f"admin.host = {self.admin.host!r}: the admin endpoint binds loopback only")
        if self.node.source == "bitcoind" and not self.node.rpc_urls:
            raise ConfigError("node.rpc_urls must list at least one node when node.source = 'bitcoind'")
        return self


def _convert(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(kind, value, key)
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array")
        return tuple(_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__}")
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
        return value
    raise ConfigError(f"{key}: unsupported type {kind}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        name = key + "_" if keyword.iskeyword(key) else key     # TOML `from` -> field `from_`
        if name not in names:
            raise ConfigError(f"unknown config key '{full}'")
        kwargs[name] = _convert(value, hints[name], full)
    missing = [f.name for f in fields(cls) if f.name not in kwargs
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{prefix or 'config'}: missing key '{missing[0]}'")
    return cls(**kwargs)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw      # a bare word is taken as a string: --set node.source=bitcoind
    *path, last = key.strip().split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[last] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                environ: dict[str, str] | None = None) -> PoolConfig:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for assignment in overrides or []:
        _apply_override(data, assignment)
    cfg: PoolConfig = _build(PoolConfig, data, "")
    env = os.environ if environ is None else environ
    if env.get("KZPOOL_RPC_PASSWORD") and not cfg.node.rpc_password:
        cfg = replace(cfg, node=replace(cfg.node, rpc_password=env["KZPOOL_RPC_PASSWORD"]))
    if (cfg.mode == "production" and cfg.auth.authorizer == "registry" and not cfg.compliance.pii_key_file
            and not env.get("KZPOOL_PII_KEY")):
        raise ConfigError("compliance.pii_key_file (or KZPOOL_PII_KEY) is required in production mode")
    return cfg.validate()


_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):[^/@\s]*@")


def redacted(cfg: PoolConfig) -> dict[str, Any]:
    """The effective configuration for logs and the audit log, with secrets blanked: password and
    secret fields, and passwords inside URLs (postgresql://user:***@host/db). Key and cookie *paths*
    stay visible: where a key lives is configuration an auditor needs, not a secret."""
    def walk(obj: Any) -> Any:
        if is_dataclass(obj):
            out = {}
            for f in fields(obj):
                value = getattr(obj, f.name)
                secret = "password" in f.name or "secret" in f.name
                out[f.name] = "***" if secret and value else walk(value)
            return out
        if isinstance(obj, tuple):
            return [walk(v) for v in obj]
        if isinstance(obj, str):
            return _URL_PASSWORD.sub(r"\1:***@", obj)
        return obj
    return walk(cfg)
