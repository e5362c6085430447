"""`kzpool bench hashing`: share-validation and raw SHA-256d throughput, hashlib path vs the C extension.

Everything runs in one thread, timed with that thread's CPU clock (time.thread_time), so the rates are
per core and time spent preempted by other processes is not counted (openssl speed likewise reports
user CPU time). Each figure is the best of several repeats (`--repeat`). Paths:

- hashlib:   pool.validation.PythonShareHasher, the pure-Python reference (what KZPOOL_NO_C=1 runs);
- c_single:  pool.native.CShareHasher with one share per call (a session validating as shares arrive);
- c_batch:   CShareHasher with the whole batch in one call (GIL released once per batch).

Also the raw double SHA-256 rate of 80-byte headers (hashlib loop vs `_kzhash.hash_headers`) against
`openssl speed -evp sha256` measured in the same run, compared in SHA-256 compressions per second.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from typing import Any, Callable

from stratum.jobs import Job, Submission

from .validation import PythonShareHasher

BRANCH_LEVELS = (0, 12)
HEADLINE_LEVELS = 12               # the figures the JSON puts at top level
DIFF1_TARGET = 0xFFFF << 208
EXTRANONCE1_SIZE, EXTRANONCE2_SIZE = 4, 8
# A header's dSHA256 is three compressions: two blocks for 80 bytes, one for the 32-byte digest.
COMPRESSIONS_PER_HEADER = 3


def coinbase_parts() -> tuple[bytes, bytes]:
    """coinb1/coinb2 of a realistic segwit coinbase (P2WPKH payout + witness commitment), made by the
    pool's own coinbase builder when it is importable, else byte strings of the same sizes."""
    commitment = bytes.fromhex("6a24aa21a9ed") + bytes(32)
    payout = bytes.fromhex("0014") + bytes(range(20))
    try:
        from .coinbase import build_coinbase
        parts = build_coinbase(880_000, 312_500_000, payout, EXTRANONCE1_SIZE + EXTRANONCE2_SIZE,
                               tag=b"/kzpool/", witness_commitment=commitment)
        return parts.coinb1, parts.coinb2
    except (ImportError, TypeError, ValueError):
        return os.urandom(54), os.urandom(100)


def make_job(levels: int, coinb1: bytes, coinb2: bytes) -> Job:
    return Job(job_id="bench", prevhash=os.urandom(32), coinb1=coinb1, coinb2=coinb2,
               merkle_branch=tuple(os.urandom(32) for _ in range(levels)), version=0x20000000,
               nbits=0x17034219, ntime=1_700_000_000, clean_jobs=False,
               network_target=0x034219 << (8 * (0x17 - 3)))


def make_subs(count: int) -> list[Submission]:
    return [Submission(os.urandom(EXTRANONCE1_SIZE), n.to_bytes(EXTRANONCE2_SIZE, "little"), 1_700_000_000 + n,
                       n * 2654435761 & 0xFFFFFFFF, 0x20000000 | (n & 0x1FFFE000), DIFF1_TARGET)
            for n in range(count)]


def best_rate(work: Callable[[], Any], items_per_call: int, repeat: int, min_seconds: float) -> float:
    """Items per CPU-second of the fastest repeat; each repeat calls `work` for at least min_seconds."""
    best = float("inf")
    for _ in range(repeat):
        calls = 0
        start = time.thread_time()
        while True:
            work()
            calls += 1
            elapsed = time.thread_time() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return items_per_call / best


def bench_shares(c_hasher: Any, levels: int, count: int, repeat: int, min_seconds: float) -> dict[str, float]:
    coinb1, coinb2 = coinbase_parts()
    job, subs = make_job(levels, coinb1, coinb2), make_subs(count)
    python_hasher = PythonShareHasher()
    rates = {"coinbase_bytes": float(len(coinb1) + EXTRANONCE1_SIZE + EXTRANONCE2_SIZE + len(coinb2))}
    rates["hashlib_shares_per_s"] = best_rate(lambda: python_hasher.hash_batch(job, subs), count, repeat,
                                              min_seconds)
    if c_hasher is None:
        return rates
    if c_hasher.hash_batch(job, subs) != python_hasher.hash_batch(job, subs):
        raise SystemExit("C and Python hashers disagree: not benchmarking a wrong answer")
    singles = [[s] for s in subs]

    def one_call_per_share() -> None:
        for single in singles:
            c_hasher.hash_batch(job, single)

    rates["c_single_shares_per_s"] = best_rate(one_call_per_share, count, repeat, min_seconds)
    rates["c_batch_shares_per_s"] = best_rate(lambda: c_hasher.hash_batch(job, subs), count, repeat, min_seconds)
    rates["ratio_single_vs_hashlib"] = rates["c_single_shares_per_s"] / rates["hashlib_shares_per_s"]
    rates["ratio_batch_vs_hashlib"] = rates["c_batch_shares_per_s"] / rates["hashlib_shares_per_s"]
    return rates


def bench_backends(kzhash: Any, count: int, repeat: int, min_seconds: float) -> dict[str, dict[str, float]]:
    """C batch and one-share-per-call rates with each SHA-256 backend this CPU supports (12 levels)."""
    from .native import CShareHasher
    coinb1, coinb2 = coinbase_parts()
    job, subs = make_job(HEADLINE_LEVELS, coinb1, coinb2), make_subs(count)
    singles = [[s] for s in subs]
    out: dict[str, dict[str, float]] = {}
    previous = kzhash.backend()
    try:
        for name in kzhash.supported_backends():
            kzhash.set_backend(name)
            hasher = CShareHasher(kzhash)

            def one_call_per_share() -> None:
                for single in singles:
                    hasher.hash_batch(job, single)

            out[name] = {
                "c_batch_shares_per_s": best_rate(lambda: hasher.hash_batch(job, subs), count, repeat, min_seconds),
                "c_single_shares_per_s": best_rate(one_call_per_share, count, repeat, min_seconds),
            }
    finally:
        kzhash.set_backend(previous)
    return out


def bench_headers(kzhash: Any, count: int, repeat: int, min_seconds: float) -> dict[str, float]:
    headers = [os.urandom(80) for _ in range(count)]
    sha256 = hashlib.sha256

    def hashlib_loop() -> None:
        for header in headers:
            sha256(sha256(header).digest()).digest()

    rates = {"hashlib_headers_per_s": best_rate(hashlib_loop, count, repeat, min_seconds)}
    if kzhash is None:
        return rates
    joined = b"".join(headers)
    rates["c_headers_per_s"] = best_rate(lambda: kzhash.hash_headers(joined), count, repeat, min_seconds)
    rates["c_compressions_per_s"] = rates["c_headers_per_s"] * COMPRESSIONS_PER_HEADER
    rates["ratio_headers_vs_hashlib"] = rates["c_headers_per_s"] / rates["hashlib_headers_per_s"]
    return rates


def parse_openssl_speed(stdout: str) -> dict[int, float] | None:
    """Bytes per second by message size from `openssl speed -evp sha256` output (its figures are in
    1000s of bytes per second, one column per size named on the `type` line)."""
    sizes: list[int] = []
    values: list[float] = []
    for line in stdout.splitlines():
        if line.startswith("type"):
            sizes = [int(n) for n in re.findall(r"(\d+) bytes", line)]
        elif line.lower().startswith("sha256") and sizes:
            values = [float(v) * 1000 for v in re.findall(r"([\d.]+)k", line)]
    if not sizes or len(values) != len(sizes):
        return None
    return dict(zip(sizes, values))


def openssl_speed(seconds: int) -> dict[str, Any] | None:
    """`openssl speed -evp sha256` in this run, converted to compressions per second.

    The 64-byte column hashes 64-byte messages (two compressions each: the data and the padding);
    the largest column (16384 bytes) is close to the bare compression rate (one per 64 bytes)."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "speed", "-seconds", str(seconds), "-evp", "sha256"], capture_output=True,
                              text=True, timeout=60 + 10 * seconds, check=False)
        version = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    by_size = parse_openssl_speed(proc.stdout)
    if by_size is None:
        return None
    out: dict[str, Any] = {"version": version, "bytes_per_s": {str(k): v for k, v in by_size.items()}}
    if 64 in by_size:
        out["compressions_per_s_64B"] = by_size[64] / 64 * 2
    largest = max(by_size)
    out["compressions_per_s_bulk"] = by_size[largest] / 64
    out["bulk_block_size"] = largest
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .native import CShareHasher, load_extension
    kzhash, why_not = load_extension()
    c_hasher = CShareHasher(kzhash) if kzhash is not None else None
    report: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "cores_used": 1},
        "c_extension": kzhash is not None, "c_unavailable_reason": why_not or None,
        "sha_ni": bool(kzhash.cpu_has_sha_ni()) if kzhash else None,
        "c_backend": kzhash.backend() if kzhash else None,
        "batch_size": args.shares, "repeat": args.repeat,
    }
    report["shares"] = {str(levels): bench_shares(c_hasher, levels, args.shares, args.repeat, args.min_seconds)
                        for levels in BRANCH_LEVELS}
    report.update({k: v for k, v in report["shares"][str(HEADLINE_LEVELS)].items()
                   if k.endswith("_per_s") or k.startswith("ratio_")})
    report["headline_branch_levels"] = HEADLINE_LEVELS
    if args.all_backends and kzhash is not None:
        report["backends"] = bench_backends(kzhash, args.shares, args.repeat, args.min_seconds)
    report["headers"] = bench_headers(kzhash, args.shares, args.repeat, args.min_seconds)
    report["openssl"] = None if args.no_openssl else openssl_speed(args.openssl_seconds)
    c_rate = report["headers"].get("c_compressions_per_s")
    if report["openssl"] and c_rate:
        for key in ("compressions_per_s_64B", "compressions_per_s_bulk"):
            if key in report["openssl"]:
                report["openssl"]["c_vs_" + key.removeprefix("compressions_per_s_")] = c_rate / report["openssl"][key]
    return report


def format_text(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']['cpu']}, Python {r['machine']['python']}, 1 core",
             f"C extension: {'yes, backend ' + r['c_backend'] if r['c_extension'] else 'no (' + str(r['c_unavailable_reason']) + ')'}"
             f", SHA-NI: {r['sha_ni']}",
             f"batch size {r['batch_size']}, best of {r['repeat']}", "",
             f"{'branch':>6} {'hashlib sh/s':>13} {'C single sh/s':>14} {'C batch sh/s':>13} "
             f"{'single/hashlib':>15} {'batch/hashlib':>14}"]
    for levels, s in r["shares"].items():
        if "c_batch_shares_per_s" not in s:
            lines.append(f"{levels:>6} {s['hashlib_shares_per_s']:>13,.0f} {'n/a':>14} {'n/a':>13} {'n/a':>15} "
                         f"{'n/a':>14}")
            continue
        lines.append(f"{levels:>6} {s['hashlib_shares_per_s']:>13,.0f} {s['c_single_shares_per_s']:>14,.0f} "
                     f"{s['c_batch_shares_per_s']:>13,.0f} {s['ratio_single_vs_hashlib']:>14.1f}x "
                     f"{s['ratio_batch_vs_hashlib']:>13.1f}x")
    if "backends" in r:
        lines += ["", f"C per backend, {r['headline_branch_levels']}-level branch (shares/s):",
                  f"  {'backend':<14} {'batch':>12} {'one per call':>13}"]
        for name, b in r["backends"].items():
            lines.append(f"  {name:<14} {b['c_batch_shares_per_s']:>12,.0f} {b['c_single_shares_per_s']:>13,.0f}")
    h = r["headers"]
    lines += ["", "raw dSHA256 of 80-byte headers:",
              f"  hashlib loop   {h['hashlib_headers_per_s']:>14,.0f} headers/s"]
    if "c_headers_per_s" in h:
        lines += [f"  C hash_headers {h['c_headers_per_s']:>14,.0f} headers/s  "
                  f"({h['c_compressions_per_s']:,.0f} compressions/s, {h['ratio_headers_vs_hashlib']:.1f}x hashlib)"]
    o = r["openssl"]
    if o:
        lines += [f"  {o['version']} speed -evp sha256:",
                  f"    64-byte messages: {o.get('compressions_per_s_64B', 0):>14,.0f} compressions/s"
                  f"  (C/openssl {o.get('c_vs_64B', 0):.2f})",
                  f"    {o.get('bulk_block_size')}-byte messages: {o.get('compressions_per_s_bulk', 0):>11,.0f} compressions/s"
                  f"  (C/openssl {o.get('c_vs_bulk', 0):.2f})"]
    else:
        lines.append("  openssl: not measured")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kzpool bench hashing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--shares", type=int, default=2000, help="submissions per batch (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="repeats per figure; the best counts (default 7)")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="minimum time per repeat (default 0.2)")
    parser.add_argument("--openssl-seconds", type=int, default=2, help="seconds per openssl block size")
    parser.add_argument("--no-openssl", action="store_true", help="skip the openssl comparison")
    parser.add_argument("--all-backends", action="store_true",
                        help="also time the C path with every SHA-256 backend this CPU supports")
    args = parser.parse_args(argv)
    if args.shares < 1 or args.repeat < 1:
        parser.error("--shares and --repeat must be at least 1")
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0


if __name__ == "__main__":
    import sys
    raise SystemExit(main(sys.argv[1:]))
