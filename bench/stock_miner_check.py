"""Runs `kzpool run` (embedded default) and a stock miner against it, then prints what happened.

    python bench/stock_miner_check.py --miner /opt/stockminer/minerd --seconds 240

The miner is any cpuminer-compatible binary (`-a sha256d -o URL -u USER -p PASS`); nobody on the
team wrote it, which is the point: the pool is checked against software that follows the protocol,
not against our own client. Prints accepted/rejected counts from the miner's own log, blocks the
simulated chain accepted, and exits non-zero when a share other than a post-block stale is rejected.
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miner", required=True, help="path to a cpuminer-compatible binary")
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="kzpool-stock-miner-"))
    pool_log, miner_log = work / "pool.log", work / "miner.log"
    pool = subprocess.Popen([sys.executable, "-m", "pool.cli", "run", "--set", 'stratum.host="127.0.0.1"',
                             "--set", f"stratum.port={port}"], cwd=work, stdout=pool_log.open("w"),
                            stderr=subprocess.STDOUT)
    time.sleep(2)
    miner = subprocess.Popen([args.miner, "-a", "sha256d", "-o", f"stratum+tcp://127.0.0.1:{port}",
                              "-u", "demo.rig1", "-p", "x", "-t", str(args.threads)],
                             stdout=miner_log.open("w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(args.seconds)
    finally:
        miner.terminate()
        miner.wait(10)
        pool.terminate()
        pool.wait(20)
    mlog, plog = miner_log.read_text(), pool_log.read_text()
    accepted = re.findall(r"accepted: (\d+)/(\d+)", mlog)
    ok, total = (int(accepted[-1][0]), int(accepted[-1][1])) if accepted else (0, 0)
    blocks = re.findall(r"block_submitted height=(\d+) hash=(\w+) node=\S+ result=(\S+)", plog)
    print(f"miner:    {args.miner}")
    print(f"duration: {args.seconds} s, threads {args.threads}")
    print(f"shares:   {ok} accepted of {total} submitted ({total - ok} rejected)")
    print(f"blocks:   {len(blocks)} found, {sum(1 for b in blocks if b[2] == 'accepted')} accepted by simnet")
    for height, block_hash, result in blocks:
        print(f"          height {height} {block_hash} {result}")
    print(f"logs:     {work}")
    return 0 if total and ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
