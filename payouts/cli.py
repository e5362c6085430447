"""`kzpool payouts ...` and `kzpool report ...`: the operator's payout and reporting commands.

    kzpool payouts run [--dry-run]           pay balances over the threshold (sendmany or PSBT)
    kzpool payouts cancel RUN_ID --reason TEXT [--psbt-lost]
                                             close a PSBT run never broadcast; its amounts back
    kzpool payouts balances                  immature / available / frozen per miner, pool accounts
    kzpool payouts deposit-set LOGIN --exchange ID --address ADDR --share-bps N
    kzpool payouts deposit-remove LOGIN
    kzpool report distributions --from D --to D [--format csv|json] [--output FILE]
    kzpool report submit --from D --to D     file not-yet-accepted distributions to the endpoint

`add_subcommands(subparsers, config_loader, gates_factory)` plugs them into the `kzpool` parser;
each leaf sets `func(args) -> exit code` and reads the database, PII key, audit key and `[payouts]`
from the config `config_loader(args)` loads (`--config` / `--set`). Every command that changes
something records itself in the audit log, and so do its ledger postings and payout decisions.
`gates_factory(cfg, db, audit)` gives the pool-wide payout gates; the default builds the location
and accreditation gate of compliance/location_gate.py. Dates are Kazakhstan calendar days.
Exit codes: 0 done, 1 refused (blocked, in doubt, failed, schema), 2 configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from compliance import audit_events
from compliance.audit_keys import load_or_create_signing_key
from compliance.audit_log import AuditLog
from compliance.pii import PiiKeyError, load_pii_box
from compliance.registry import LicenceRegistry
from pool.config import ConfigError, PoolConfig
from pool.db import Database, SchemaError

from .cancel import CancelRefused, cancel_run
from .deposits import DepositError, remove_deposit, set_deposit
from .gates import LicenceGate, PayoutGate
from .ledger import Ledger, parse_miner_account
from .report_submitter import ReportSubmitter
from .reports import FORMATS, distribution_rows, render_csv, render_json
from .run_lock import RunLocked
from .run_store import RunStore
from .runner import PayoutRunner, RunResult
from .settings import PayoutSettings, PayoutSettingsError, payout_settings
from .wallet_rpc import WalletRpc, btc_string

ConfigLoader = Callable[[argparse.Namespace], PoolConfig]
GatesFactory = Callable[[PoolConfig, Database, Callable[[str, dict[str, Any]], None]], Sequence[PayoutGate]]
OK_STATUSES = ("sent", "psbt", "nothing", "dry_run")


@dataclass
class Context:
    cfg: PoolConfig
    settings: PayoutSettings
    db: Database
    audit: AuditLog
    ledger: Ledger
    registry: LicenceRegistry


def compliance_gates(cfg: PoolConfig, db: Database, audit: Callable[[str, dict[str, Any]], None]
                     ) -> Sequence[PayoutGate]:
    """Location attestation and accreditation (issue 8's LocationPayoutGate), from `[location]`
    and `[accreditation]` when the config has them."""
    from compliance.accreditation import AccreditationGuard, accreditation_from_settings
    from compliance.location_gate import LocationPayoutGate
    from compliance.power_plan import setting
    accreditation, location = getattr(cfg, "accreditation", None), getattr(cfg, "location", None)
    guard = AccreditationGuard(accreditation_from_settings(accreditation), production=cfg.mode == "production",
                               warn_days=setting(accreditation, "warn_days", 30), audit=audit)
    return [LocationPayoutGate(db, mode=setting(location, "mode", "warn"), accreditation=guard,
                               window_s=setting(location, "payout_window_s", 7 * 86400.0))]


async def _open(cfg: PoolConfig) -> Context:
    settings = payout_settings(cfg)
    db = Database(cfg.database.url)
    try:
        await db.check_schema()
        key = load_or_create_signing_key(cfg.audit.key_file, create_if_missing=cfg.mode != "production")
        pii = load_pii_box(cfg.compliance.pii_key_file, allow_demo_key=cfg.mode == "demo",
                           demo_key_path=str(Path(cfg.database.spill_path).parent / "pii-demo.key"))
    except BaseException:
        await db.close()
        raise
    audit = AuditLog(db, key)
    await audit.start()
    return Context(cfg, settings, db, audit, Ledger(db, audit=audit.record), LicenceRegistry(db, pii, audit=audit.record))


def _run(args: argparse.Namespace, work: Callable[[Context], Awaitable[int]]) -> int:
    async def main() -> int:
        ctx = await _open(args.config_loader(args))
        try:
            ctx.audit.record(audit_events.ADMIN_COMMAND, audit_events.admin_command(
                f"{args.command} {getattr(args, 'sub_command', '')}".strip(), _arguments(args), getpass.getuser()))
            return await work(ctx)
        finally:
            await ctx.audit.close()
            await ctx.db.close()
    try:
        return asyncio.run(main())
    except (ConfigError, PayoutSettingsError, PiiKeyError) as exc:
        print(f"kzpool: configuration error: {exc}", file=sys.stderr)
        return 2
    except (SchemaError, RunLocked, DepositError) as exc:
        print(f"kzpool: {exc}", file=sys.stderr)
        return 1


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "config_loader", "gates_factory", "set", "command", "sub_command"}
    return {k: (str(v) if isinstance(v, date) else v) for k, v in vars(args).items() if k not in skip}


def cmd_run(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        s = ctx.settings
        wallet = WalletRpc(s.wallet_rpc_url, user=s.wallet_rpc_user, password=s.wallet_rpc_password,
                           cookie_file=s.wallet_rpc_cookie_file, timeout_s=s.wallet_rpc_timeout_s)
        try:
            runner = PayoutRunner(ctx.db, ctx.ledger, wallet, LicenceGate(ctx.registry, ctx.cfg.chain.network), s,
                                  gates=args.gates_factory(ctx.cfg, ctx.db, ctx.audit.record), audit=ctx.audit.record)
            result = await runner.run(dry_run=args.dry_run)
        finally:
            await wallet.close()
        _print_run(result)
        return 0 if result.status in OK_STATUSES else 1
    return _run(args, work)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        s = ctx.settings
        wallet = WalletRpc(s.wallet_rpc_url, user=s.wallet_rpc_user, password=s.wallet_rpc_password,
                           cookie_file=s.wallet_rpc_cookie_file, timeout_s=s.wallet_rpc_timeout_s)
        try:
            result = await cancel_run(ctx.db, ctx.ledger, wallet, s, args.run_id, args.reason, getpass.getuser(),
                                      psbt_lost=args.psbt_lost, audit=ctx.audit.record)
        except CancelRefused as exc:
            print(f"kzpool: cancel refused ({exc.code}): {exc}", file=sys.stderr)
            return 1
        finally:
            await wallet.close()
        for login, sats in sorted(result.items.items()):
            print(f"back     {login:<24} {btc_string(sats):>16} BTC  (available again)")
        for txid, vout in result.unlocked:
            print(f"unlocked {txid}:{vout}")
        if result.psbt_path:
            print(f"PSBT moved to {result.psbt_path}")
        print(f"checked: {result.evidence}")
        print(f"payout run {result.run_id}: cancelled by {result.operator}: {btc_string(result.total_sats)} BTC back "
              f"on {len(result.items)} miner balance(s)")
        return 0
    return _run(args, work)


def _print_run(result: RunResult) -> None:
    for run_id, status in result.reconciled.items():
        print(f"earlier run {run_id}: {status}")
    for login, (sats, reason) in result.frozen.items():
        print(f"frozen   {login:<24} {btc_string(sats):>16} BTC  {reason}")
    for login, sats in result.released.items():
        print(f"released {login:<24} {btc_string(sats):>16} BTC")
    for item in result.items:
        share = f"  exchange {item.exchange_id} {item.exchange_share_bps / 100:g}%: {btc_string(item.exchange_sats)}" \
            if item.exchange_sats else ""
        print(f"pay      {item.login:<24} {btc_string(item.amount_sats):>16} BTC  commission "
              f"{btc_string(item.commission_sats)}{share}{'  ' + item.note if item.note else ''}")
    tail = {"sent": f"txid {result.txid}", "psbt": f"PSBT {result.psbt_path} (txid {result.txid})"}.get(result.status,
                                                                                                      result.reason)
    print(f"payout run {result.run_id or '-'}: {result.status}{': ' + tail if tail else ''}")


def cmd_balances(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        per_miner: dict[str, dict[str, int]] = {}
        other: dict[str, int] = {}
        for account, balance in sorted((await ctx.ledger.balances()).items()):
            miner = parse_miner_account(account)
            if miner is None:
                other[account] = balance.amount
            else:
                per_miner.setdefault(miner[0], {})[miner[1]] = balance.amount
        print(f"{'login':<24} {'immature':>16} {'available':>16} {'frozen':>16}")
        for login, buckets in per_miner.items():
            print(f"{login:<24} " + " ".join(f"{btc_string(max(0, buckets.get(b, 0))):>16}"
                                             for b in ("immature", "available", "frozen")))
        for account, sats in other.items():
            print(f"{account:<24} {'-' if sats < 0 else ''}{btc_string(abs(sats))}")
        return 0
    return _run(args, work)


def cmd_deposit_set(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        await set_deposit(ctx.db, args.login, args.exchange, args.address, args.share_bps,
                          network=ctx.cfg.chain.network, eligible=ctx.settings.eligible_exchanges,
                          audit=ctx.audit.record)
        print(f"{args.login}: {args.share_bps / 100:g}% of each payout to {args.exchange} {args.address}")
        return 0
    return _run(args, work)


def cmd_deposit_remove(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        found = await remove_deposit(ctx.db, args.login, audit=ctx.audit.record)
        print(f"{args.login}: deposit {'removed' if found else 'was not registered'}")
        return 0
    return _run(args, work)


def cmd_distributions(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        s = ctx.settings
        rows = await distribution_rows(RunStore(ctx.db, ctx.ledger), ctx.registry, args.date_from, args.date_to,
                                       asset=s.asset, schema=s.report_schema)
        text = render_csv(rows, s.report_schema) if args.format == "csv" else render_json(
            rows, args.date_from, args.date_to, schema=s.report_schema, pool_bin=s.pool_bin, pool_name=s.pool_name)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"{len(rows)} distribution(s) written to {args.output} ({s.report_schema})")
        else:
            sys.stdout.write(text)
        return 0
    return _run(args, work)


def cmd_submit(args: argparse.Namespace) -> int:
    async def work(ctx: Context) -> int:
        s = ctx.settings
        if not s.report_endpoint:
            print("kzpool: payouts.report_endpoint is not configured", file=sys.stderr)
            return 2
        rows = await distribution_rows(RunStore(ctx.db, ctx.ledger), ctx.registry, args.date_from, args.date_to,
                                       asset=s.asset, schema=s.report_schema)
        submitter = ReportSubmitter(ctx.db, s.report_endpoint, token=s.report_secret, ca_file=s.report_ca_file,
                                    timeout_s=s.report_timeout_s, attempts=s.report_attempts,
                                    backoff_s=s.report_backoff_s, audit=ctx.audit.record)
        result = await submitter.submit(rows, args.date_from, args.date_to, schema=s.report_schema,
                                        pool_bin=s.pool_bin, pool_name=s.pool_name)
        print(f"report {s.report_schema} {args.date_from}..{args.date_to}: {result.status}, {result.rows} "
              f"distribution(s), HTTP {result.http_status}, {result.attempts} attempt(s)")
        return 0 if result.status in ("accepted", "nothing") else 1
    return _run(args, work)


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected YYYY-MM-DD (a Kazakhstan calendar day)") from None


def add_subcommands(subparsers: Any, config_loader: ConfigLoader,
                    gates_factory: GatesFactory = compliance_gates) -> None:
    def leaf(group: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        parser = group.add_parser(name, help=help_text)
        parser.add_argument("--config", help="TOML config file (default: the embedded demo default)")
        parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override one config key; the value is parsed as TOML")
        parser.set_defaults(func=func, config_loader=config_loader, gates_factory=gates_factory, sub_command=name)
        return parser

    payouts = subparsers.add_parser("payouts", help="miners' balances and payout runs")
    group = payouts.add_subparsers(dest="payouts_command", required=True)
    leaf(group, "run", cmd_run, "pay every licensed balance over payouts.threshold_sats") \
        .add_argument("--dry-run", action="store_true", help="show what would be frozen and paid; change nothing")
    cancel = leaf(group, "cancel", cmd_cancel, "cancel a PSBT payout run whose transaction was never broadcast")
    cancel.add_argument("run_id", metavar="RUN_ID", help="the payout run id (`payout run <id>: psbt` of the run)")
    cancel.add_argument("--reason", required=True, help="why (recorded on the run, the ledger and the audit log)")
    cancel.add_argument("--psbt-lost", action="store_true",
                        help="the run's PSBT file is gone everywhere: check only the txid with the wallet")
    leaf(group, "balances", cmd_balances, "immature, available and frozen balances per miner")
    deposit = leaf(group, "deposit-set", cmd_deposit_set, "register a miner's licensed-exchange deposit address")
    deposit.add_argument("login")
    deposit.add_argument("--exchange", required=True, help="an id from payouts.eligible_exchanges")
    deposit.add_argument("--address", required=True)
    deposit.add_argument("--share-bps", type=int, required=True, help="share of each payout, basis points")
    leaf(group, "deposit-remove", cmd_deposit_remove, "forget a miner's exchange deposit").add_argument("login")

    report = subparsers.add_parser("report", help="reports for the state revenue bodies")
    rgroup = report.add_subparsers(dest="report_command", required=True)
    for name, func, text in (("distributions", cmd_distributions, "distributions to miners (MoF form, 2026)"),
                             ("submit", cmd_submit, "file distributions not yet accepted to payouts.report_endpoint")):
        parser = leaf(rgroup, name, func, text)
        parser.add_argument("--from", dest="date_from", type=_date, required=True, help="first day, KZ time")
        parser.add_argument("--to", dest="date_to", type=_date, required=True, help="last day (inclusive)")
        if name == "distributions":
            parser.add_argument("--format", choices=FORMATS, default="csv")
            parser.add_argument("--output", help="file to write (default: stdout)")


def main(argv: list[str] | None = None) -> int:
    from pool.cli import run_subcommands
    return run_subcommands("python -m payouts.cli", add_subcommands, argv)


if __name__ == "__main__":
    sys.exit(main())
