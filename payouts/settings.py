"""The `[payouts]` settings: every key with its default and why, validated across fields.

The composition root owns `pool/config.py`; until it grows a `[payouts]` section this dataclass is
the section (`PoolConfig.payouts` when present, these defaults otherwise: `payout_settings(cfg)`).
All money is integer satoshis; shares of a payout are basis points (1/100 of a percent).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

SCHEMES = ("pplns", "pps", "fpps", "prop", "solo")
METHODS = ("sendmany", "psbt")
BPS = 10_000
WALLET_PASSWORD_ENV = "KZPOOL_WALLET_RPC_PASSWORD"
REPORT_SECRET_ENV = "KZPOOL_REPORT_SECRET"


class PayoutSettingsError(ValueError):
    """A `[payouts]` value that cannot work; the message names the key."""


@dataclass(frozen=True, slots=True)
class PayoutSettings:
    scheme: str = "pplns"                   # pplns | pps | fpps | prop | solo
    fee_bps: int = 100                      # pool commission: 100 bps = 1%
    pplns_window_factor: float = 2.0        # PPLNS window = factor x network difficulty, in share difficulty
    maturity: int = 100                     # confirmations before a block's credits can be paid (Core's
                                            # coinbase maturity: the coins cannot be spent earlier)
    tracker_interval_s: float = 30.0        # how often found blocks are checked against the node
    share_wait_s: float = 60.0              # a block's own share may still be in the share log's batch
    pps_interval_s: float = 60.0            # PPS/FPPS: how often stored shares are credited
    pps_lag_s: float = 120.0                # ... shares younger than this wait (batches still committing)
    pps_recheck_s: float = 3600.0           # ... minutes re-read for shares a spill replay stored late
    fpps_fee_window: int = 144              # FPPS: expected fees = mean over this many recent heights
    threshold_sats: int = 100_000           # balances below this wait for the next run (0.001 BTC)
    dust_sats: int = 546                    # an output below this is not created (Core's dust limit, P2PKH)
    method: str = "sendmany"                # sendmany (hot wallet) | psbt (unsigned PSBT for cold signing)
    wallet_rpc_url: str = "http://127.0.0.1:8332/wallet/kzpool-payouts"
    wallet_rpc_user: str = ""
    wallet_rpc_password: str = ""           # or KZPOOL_WALLET_RPC_PASSWORD in the environment
    wallet_rpc_cookie_file: str = ""
    wallet_rpc_timeout_s: float = 60.0
    conf_target: int = 6                    # blocks the payout transaction's fee aims at
    in_doubt_grace_s: float = 600.0         # a run left "prepared" younger than this is not cancelled:
                                            # its sendmany may still be executing in the wallet
    reconcile_scan: int = 10_000            # wallet transactions searched for a lost run's comment
    psbt_dir: str = "./var/psbt"
    eligible_exchanges: tuple[str, ...] = ()    # ids of licensed exchanges (AIFC, or NB-supervised)
    exchange_min_share_bps: tuple[str, ...] = ()  # "YEAR:BPS", e.g. "2024:5000", "2025:7500"
    report_endpoint: str = ""               # Qoldau.kz API URL (https://), empty: submission disabled
    report_secret: str = ""                 # bearer token, or KZPOOL_REPORT_SECRET in the environment;
                                            # "secret" in the name: config.redacted() blanks it
    report_ca_file: str = ""                # extra CA bundle for the endpoint's certificate
    report_timeout_s: float = 30.0
    report_attempts: int = 5                # POST attempts per submission (exponential backoff)
    report_backoff_s: float = 2.0           # first retry wait; doubles each attempt
    report_schema: str = "kz-mof-2026-v1"
    pool_bin: str = ""                      # the pool's own BIN for the report header
    pool_name: str = ""
    asset: str = "BTC"                      # ticker the tax authority values (CoinMarketCap daily average)

    def validate(self) -> "PayoutSettings":
        if self.scheme not in SCHEMES:
            raise PayoutSettingsError(f"payouts.scheme = {self.scheme!r}: expected one of {list(SCHEMES)}")
        if self.method not in METHODS:
            raise PayoutSettingsError(f"payouts.method = {self.method!r}: expected one of {list(METHODS)}")
        if not 0 <= self.fee_bps < BPS:
            raise PayoutSettingsError("payouts.fee_bps must be in 0..9999")
        if not self.pplns_window_factor > 0:
            raise PayoutSettingsError("payouts.pplns_window_factor must be > 0")
        if self.maturity < 1:
            raise PayoutSettingsError("payouts.maturity must be >= 1")
        if self.threshold_sats < self.dust_sats:
            raise PayoutSettingsError("payouts.threshold_sats must be >= payouts.dust_sats")
        if self.fpps_fee_window < 1 or self.reconcile_scan < 1 or self.report_attempts < 1:
            raise PayoutSettingsError("payouts.fpps_fee_window, reconcile_scan and report_attempts must be >= 1")
        self.min_share_by_year()
        if self.report_endpoint and urlsplit(self.report_endpoint).scheme != "https":
            raise PayoutSettingsError("payouts.report_endpoint must be an https:// URL")
        return self

    def min_share_by_year(self) -> dict[int, int]:
        """{year: minimum exchange share in bps}; a year without an entry takes the latest earlier one."""
        out: dict[int, int] = {}
        for item in self.exchange_min_share_bps:
            year, sep, bps = item.partition(":")
            try:
                if not sep:
                    raise ValueError
                out[int(year)] = int(bps)
            except ValueError:
                raise PayoutSettingsError(f"payouts.exchange_min_share_bps: {item!r} is not YEAR:BPS") from None
            if not 0 <= out[int(year)] <= BPS:
                raise PayoutSettingsError(f"payouts.exchange_min_share_bps: {item!r}: bps must be 0..10000")
        return out

    def min_share_bps(self, year: int) -> int:
        table = self.min_share_by_year()
        years = [y for y in table if y <= year]
        return table[max(years)] if years else 0


def payout_settings(cfg: Any = None, environ: dict[str, str] | None = None) -> PayoutSettings:
    """The `[payouts]` section of a PoolConfig (or its defaults before the section exists), with the
    secrets the environment may carry, validated."""
    section = getattr(cfg, "payouts", None)
    settings = PayoutSettings()
    if section is not None:
        names = {f.name for f in fields(PayoutSettings)}
        settings = PayoutSettings(**{n: getattr(section, n) for n in names if hasattr(section, n)})
    env = os.environ if environ is None else environ
    if env.get(WALLET_PASSWORD_ENV) and not settings.wallet_rpc_password:
        settings = replace(settings, wallet_rpc_password=env[WALLET_PASSWORD_ENV])
    if env.get(REPORT_SECRET_ENV) and not settings.report_secret:
        settings = replace(settings, report_secret=env[REPORT_SECRET_ENV])
    return settings.validate()
