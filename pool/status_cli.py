"""`kzpool status [--json]`: ask the running pool over its localhost admin endpoint and print the answer.

Exit status: 0 when the pool answered, 3 when nothing answers (the pool is not running; the same code
as `systemctl status` for an inactive unit), 1 when something answers but not as the pool does.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Callable

DEFAULT_ADMIN_HOST = "127.0.0.1"
DEFAULT_ADMIN_PORT = 9109
REQUEST_TIMEOUT_S = 5.0
EXIT_NOT_RUNNING = 3

ConfigLoader = Callable[[argparse.Namespace], Any]


class PoolNotRunning(Exception):
    pass


def fetch_status(host: str, port: int, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            status: dict[str, Any] = json.loads(reply.read())
            return status
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionRefusedError, FileNotFoundError)):
            raise PoolNotRunning(f"nothing answers on {host}:{port}") from None
        raise


def admin_address(args: argparse.Namespace, config_loader: ConfigLoader | None) -> tuple[str, int]:
    if args.admin:
        host, _, port = args.admin.rpartition(":")
        return host.strip("[]") or DEFAULT_ADMIN_HOST, int(port)
    admin = getattr(config_loader(args), "admin", None) if config_loader else None
    if admin is None:          # a config without an [admin] section: the defaults
        return DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT
    return admin.host, admin.port


def cmd_status(args: argparse.Namespace, config_loader: ConfigLoader | None = None) -> int:
    try:
        host, port = admin_address(args, config_loader)
    except ValueError as exc:
        print(f"kzpool status: {exc}", file=sys.stderr)
        return 2
    try:
        status = fetch_status(host, port)
    except PoolNotRunning as exc:
        print(f"kzpool is not running: {exc} (the admin endpoint). Start it with `kzpool run` "
              "or `systemctl start kzpool`.", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (OSError, ValueError) as exc:
        print(f"kzpool status: no valid answer from {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 0


def si(value: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(value) < 1000 or prefix == "E":
            return f"{value:.3g} {prefix}{unit}"
        value /= 1000
    return f"{value} {unit}"


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m ago" if s >= 3600 else f"{s // 60}m{s % 60:02d}s ago"


def render(st: dict[str, Any]) -> str:
    p, c, sh, b = st["pool"], st["connections"], st["shares"], st["blocks"]
    total = sh["accepted"] + sh["rejected"]
    lines = [f"kzpool {p['version']}  mode={p['mode']}  source={p['source']}  hasher={p['hasher']}",
             f"hashrate     {si(st['hashrate']['pool_hps'], 'H/s')} (last {st['hashrate']['window_s']:g} s)"]
    for top in st["hashrate"]["top_logins"][:5]:
        lines.append(f"             {top['login']}: {si(top['hps'], 'H/s')}")
    lines.append(f"workers      {st['workers']} on {sum(c.values())} connections "
                 f"({', '.join(f'{k} {v}' for k, v in c.items())}); {st['logins']} logins")
    lines.append(f"shares       accepted {sh['accepted']}, rejected {sh['rejected']}"
                 + (f" ({100 * sh['rejected'] / total:.1f}%)" if total else ""))
    chain = st["chain"]
    lines.append("chain        no template yet" if chain is None else
                 f"chain        height {chain['height']}, tip changed {ago(chain['tip_age_s'])}, "
                 f"template {ago(chain['template_age_s'])}")
    lines.append(f"blocks       found {b['found']}, submitted {b['submitted']}, accepted {b['accepted']}, "
                 f"rejected {b['rejected']}")
    last = st["last_block"]
    lines.append("last block   none found since the pool started" if last is None else
                 f"last block   {last['height']} {last['hash']} "
                 f"{'accepted' if last['accepted'] else 'REJECTED'} {ago(p['time'] - last['at'])}")
    for i, node in enumerate(st["nodes"]):
        label = "nodes        " if i == 0 else "             "
        if node["kind"] != "bitcoind":
            lines.append(f"{label}{node['name']} (simulated chain, in process)")
            continue
        state = "up" if node["healthy"] else "DOWN"
        extra = f"height {node['height']}" if node["healthy"] else f"failures {node['failures']}: {node['last_error']}"
        lines.append(f"{label}{node['name']} {state}{' STALE' if node['stale'] else ''} {extra}")
    for name in ("attestation", "curtailments"):
        section = st.get(name) or {"state": "unavailable", "reason": "not reported"}
        detail = section.get("reason") or json.dumps({k: v for k, v in section.items() if k != "state"})
        lines.append(f"{name:<12} {section.get('state', '?')} ({detail})")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser, with_config: bool) -> None:
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--admin", metavar="HOST:PORT", help="admin endpoint (default: [admin] of the config, "
                   f"else {DEFAULT_ADMIN_HOST}:{DEFAULT_ADMIN_PORT})")
    if with_config:
        p.add_argument("--config", help="TOML config file whose [admin] section names the endpoint")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config key; the value is parsed as TOML")


def add_subcommands(subparsers: Any, config_loader: ConfigLoader) -> None:
    """Adds `status` to the `kzpool` command; `config_loader(args)` returns the PoolConfig."""
    p = subparsers.add_parser("status", help="ask the running pool for its status (localhost admin endpoint)")
    add_arguments(p, with_config=True)
    p.set_defaults(func=lambda args: cmd_status(args, config_loader))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kzpool status", description=__doc__.splitlines()[0])
    add_arguments(parser, with_config=True)
    args = parser.parse_args(argv)

    def load(a: argparse.Namespace) -> Any:
        from .config import load_config
        return load_config(a.config, a.set)
    return cmd_status(args, load)


if __name__ == "__main__":
    sys.exit(main())
