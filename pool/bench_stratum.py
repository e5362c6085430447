"""`kzpool bench stratum`: a Stratum load generator against a real pool over real TCP.

    kzpool bench stratum --miners 1000 --rate 10000 --duration 20 --idle 10000 --json result.json

By default it starts `python -m pool.cli run` in a temporary directory (embedded default: SQLite share
log and audit log on, licence-registry authorization) with a fixed tiny share difficulty and an easy
simulated chain, then, from `--processes` load-generator processes (uvloop):
1. opens `--idle` connections that configure/subscribe/authorize and then only read, and measures the
   pool's memory per idle connection (RSS and PSS of its process tree, before and after);
2. opens `--miners` connections that submit real shares (valid at the pool's difficulty; the pool
   hashes every one) at `--rate` shares/s in total for `--duration` s, timing each submit's reply;
3. halfway through, mines a real block on one miner and times the clean `mining.notify` reaching
   every connection, idle ones included;
4. reads the pool's CPU time (utime + stime, whole process tree) over the measured window and
   reports CPU per accepted share, so the generator sharing the machine does not skew it.
`--connect HOST:PORT [--server-pid PID]` measures an already running pool instead.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from . import loadgen_server as srv
from .loadgen_proc import ProcSpec, child_main
from .loadgen_report import format_text, ms_summary, per_unit, split, split_rate, summarise, targets

FDS_PER_PROCESS_RESERVE = 300
IDLE_SETTLE_S = 5.0           # after connecting, before the idle CPU window starts


class Child:
    """A generator process and its command pipe; replies that arrive early are kept until asked for."""
    def __init__(self, ctx: Any, spec: ProcSpec) -> None:
        self.pipe, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=child_main, args=(child_end, spec), daemon=True)
        self.proc.start()
        self.backlog: list[tuple] = []

    def send(self, *cmd: Any) -> None:
        self.pipe.send(cmd)

    def wait(self, name: str, timeout_s: float) -> tuple:
        deadline = time.monotonic() + timeout_s
        while True:
            for i, msg in enumerate(self.backlog):
                if msg[0] == name:
                    return self.backlog.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or not self.pipe.poll(left):
                raise TimeoutError(f"generator process gave no {name!r} reply in {timeout_s:g} s")
            msg = self.pipe.recv()
            if msg[0] == "error":
                raise RuntimeError(f"generator process failed: {msg[1]}")
            self.backlog.append(msg)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kzpool bench stratum", description=__doc__.split("\n\n")[0])
    p.add_argument("--miners", type=int, default=100, help="submitting connections (default 100)")
    p.add_argument("--idle", type=int, default=0, help="idle authorized connections (default 0)")
    p.add_argument("--rate", type=float, default=2000.0, help="total target shares/s (default 2000)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds of submitting (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of submitting before measuring (default 2)")
    p.add_argument("--idle-cpu-window", type=float, default=5.0, help="seconds the pool's CPU is read with "
                   "only idle connections open (default 5: one stratum.sweep_interval_s; 0 skips)")
    p.add_argument("--processes", type=int, default=2, help="load-generator processes (default 2; raised "
                   "so that each stays under its open-file limit)")
    p.add_argument("--source-addrs", type=int, default=-1, help="bind client sockets to 127.0.0.2 .. "
                   "127.0.0.K+1 (default: one per 25,000 connections, none below that)")
    p.add_argument("--max-in-flight", type=int, default=100_000, help="most submits awaiting a reply, over "
                   "all processes; a due share beyond it is skipped and counted as throttled (default "
                   "100000: open loop; a few thousand measures capacity without an unbounded backlog)")
    p.add_argument("--difficulty", type=float, default=1e-9, help="share difficulty the pool is started "
                   "with (min = start = max); 1e-9 makes about 1 hash in 4 a share (default)")
    p.add_argument("--simnet-bits", default="1f00ffff", help="simulated chain nBits, easy enough for the "
                   "generator to mine a block on demand (default 1f00ffff, ~65k hashes)")
    p.add_argument("--no-block", action="store_true", help="do not mine a block (no fan-out figure)")
    p.add_argument("--workers", type=int, default=0, help="pool worker processes (kzpool run --workers), "
                   "when the pool supports it")
    p.add_argument("--server-args", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra --set for the pool (repeatable)")
    p.add_argument("--postgres", metavar="ADMIN_DSN", help="store shares in a scratch PostgreSQL database "
                   "created through ADMIN_DSN (e.g. postgresql://postgres@127.0.0.1:5432/test) and dropped "
                   "afterwards; the database server's CPU is reported too when it runs on this machine")
    p.add_argument("--connect", metavar="HOST:PORT", help="use a running pool instead of starting one")
    p.add_argument("--server-pid", type=int, help="with --connect: the pool's pid, for CPU and memory")
    p.add_argument("--py-spy", metavar="FILE", help="profile the pool with py-spy during the measured window "
                   "(collapsed stacks to FILE; py-spy must be on PATH or beside this Python)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE ('-': stdout)")
    p.add_argument("--workdir-base", metavar="DIR", help="create the pool's temporary working directory "
                   "(SQLite database, share log) under DIR, e.g. /dev/shm to take the disk out")
    p.add_argument("--keep-workdir", action="store_true", help="keep the pool's temporary directory")
    args = p.parse_args(argv)
    if args.miners < 0 or args.idle < 0 or args.rate < 0 or args.duration <= 0 or args.processes < 1:
        p.error("--miners, --idle and --rate must be >= 0, --duration > 0, --processes >= 1")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: dict[str, Any] = {"benchmark": "stratum", "machine": srv.machine(),
                                       "started_utc": datetime.datetime.now(datetime.timezone.utc)
                                       .isoformat(timespec="seconds"), "load_average_before": srv.load_average()}
        self.pool: srv.PoolProcess | None = None
        self.pid: int | None = args.server_pid
        self.children: list[Child] = []
        self.notes: list[str] = []
        self.metrics_port = 0
        self.scratch_db: srv.ScratchPostgres | None = None
        self.db_pid: int | None = None

    # ---- setup ---------------------------------------------------------------------------------
    def start_pool(self, workdir: Path) -> tuple[str, int]:
        a = self.args
        if a.connect:
            host, _, port = a.connect.rpartition(":")
            return host or "127.0.0.1", int(port)
        port, self.metrics_port = srv.free_port(), srv.free_port()
        sets = srv.default_overrides(port, self.metrics_port, a.difficulty, a.simnet_bits)
        if a.postgres:
            self.scratch_db = srv.ScratchPostgres(a.postgres)
            sets.append(f'database.url="{self.scratch_db.create()}"')
            self.db_pid = self.scratch_db.postmaster_pid
        sets += list(a.server_args)
        workers = a.workers
        if workers and not srv.supports_workers():
            self.notes.append(f"--workers {workers} ignored: this kzpool run has no --workers option")
            workers = 0
        self.pool = srv.start_pool(workdir, port, sets, workers)
        self.pid = self.pool.pid
        self.result["pool_start_s"] = round(self.pool.wait_listening(), 2)
        self.result["pool_command"] = " ".join(self.pool.args[1:])
        self.result["pool_workers"] = workers or 1
        return "127.0.0.1", port

    def spawn(self, host: str, port: int) -> None:
        a = self.args
        total = a.idle + a.miners + 1
        per_proc_fds = srv.nofile_hard() - FDS_PER_PROCESS_RESERVE
        procs = max(a.processes, math.ceil(total / per_proc_fds))
        k = a.source_addrs if a.source_addrs >= 0 else (math.ceil(total / 25_000) if total > 25_000 else 0)
        sources = tuple(f"127.0.0.{i + 2}" for i in range(k))
        self.result["config"] = {"miners": a.miners, "idle": a.idle, "rate": a.rate, "duration_s": a.duration,
                                 "warmup_s": a.warmup, "processes": procs, "max_in_flight": a.max_in_flight,
                                 "source_addrs": list(sources),
                                 "difficulty": a.difficulty, "simnet_bits": a.simnet_bits,
                                 "server_args": list(a.server_args), "connect": a.connect,
                                 "workdir_base": a.workdir_base or tempfile.gettempdir(),
                                 "database": "postgresql (scratch)" if a.postgres else "sqlite (default)"}
        ctx = multiprocessing.get_context("spawn")
        in_flight = max(1, a.max_in_flight // procs)
        self.children = [Child(ctx, ProcSpec(i, host, port, sources, in_flight)) for i in range(procs)]

    def usage(self) -> srv.Usage | None:
        return srv.usage(self.pid) if self.pid else None

    # ---- phases --------------------------------------------------------------------------------
    def open_connections(self, kind: str, total: int, first: int, timeout_s: float) -> dict[str, Any]:
        counts = split(total, len(self.children))
        offset = first
        for child, n in zip(self.children, counts):
            child.send(kind, n, offset)
            offset += n
        replies = [c.wait(kind, timeout_s) for c in self.children]
        ok, failed = sum(r[1] for r in replies), sum(r[2] for r in replies)
        seconds = max(r[3] for r in replies)
        errors = [e for r in replies for e in r[4]]
        out = {"ok": ok, "failed": failed, "seconds": round(seconds, 2),
               "per_s": round(ok / seconds, 1) if seconds > 0 else None}
        if errors:
            out["errors"] = errors[:5]
        return out

    def idle_phase(self) -> None:
        a = self.args
        before = self.usage()
        idle = self.open_connections("idle", a.idle, 1_000_000, 120 + a.idle / 50)
        time.sleep(2.0)                     # let the pool's allocations settle (authorization tasks, audit)
        after = self.usage()
        quiet = settled = None
        if a.idle_cpu_window > 0:
            time.sleep(IDLE_SETTLE_S)       # the audit log's authorization records, handshake garbage
            settled = self.usage()
            time.sleep(a.idle_cpu_window)
            quiet = self.usage()
        self.result["idle_connections"] = idle
        if settled and quiet:
            # What holding the idle connections costs with nothing happening (timer sweeps).
            self.result["server_cpu_cores_idle"] = round((quiet.cpu_s - settled.cpu_s) / (quiet.at - settled.at), 3)
        if before and after:
            self.result["server_rss_before_idle_mb"] = round(before.rss_kb / 1024, 1)
            self.result["server_rss_with_idle_mb"] = round(after.rss_kb / 1024, 1)
            if idle["ok"]:
                # Accepting, subscribing and authorizing one connection (registry lookup, audit record).
                self.result["server_cpu_us_per_connect"] = round((after.cpu_s - before.cpu_s) / idle["ok"] * 1e6, 1)
                self.result["server_cpu_us_per_connect_by_thread"] = per_unit(before.threads, after.threads, idle["ok"])
                self.result["server_rss_per_idle_conn_kb"] = round((after.rss_kb - before.rss_kb) / idle["ok"], 2)
                self.result["server_pss_per_idle_conn_kb"] = round((after.pss_kb - before.pss_kb) / idle["ok"], 2)

    def active_phase(self) -> None:
        a = self.args
        miners = a.miners if a.miners or a.no_block else 1      # one miner to find the block
        self.result["miner_connections"] = self.open_connections("active", miners, 0, 120 + miners / 50)
        if a.warmup > 0 and a.miners and a.rate:
            self.submit_window(a.warmup, block=False, measured=False)

    def submit_window(self, seconds: float, block: bool, measured: bool = True) -> dict[str, Any]:
        a = self.args
        rate = a.rate if a.miners else 0.0
        active = [c for c, n in zip(self.children, split(a.miners, len(self.children))) if n] if rate else []
        profiler = self.start_profiler(seconds) if measured else None
        start = self.usage()
        db_start = srv.usage(self.db_pid) if self.db_pid else None
        for child, r in zip(active, split_rate(rate, len(active))):
            child.send("rate", r, seconds)
        fanout = None
        if block:
            time.sleep(seconds / 2)
            fanout = self.fanout()
        reports = [c.wait("rate", seconds + 60) for c in active]
        end = self.usage()
        db_end = srv.usage(self.db_pid) if self.db_pid else None
        if profiler is not None:
            profiler.wait(60)
        return {"reports": [r[1] for r in reports], "start": start, "end": end, "fanout": fanout,
                "db": (db_start, db_end)}

    def start_profiler(self, seconds: float) -> subprocess.Popen | None:
        if not self.args.py_spy or not self.pid:
            return None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [exe, "record", "--nonblocking", "--threads", "--format", "raw", "--rate", "250",
               "-d", str(max(1, int(seconds))), "-o", self.args.py_spy, "-p", str(self.pid)]
        if self.result.get("pool_workers", 1) > 1:
            cmd.append("--subprocesses")
        self.result["profile"] = {"file": self.args.py_spy, "command": " ".join(cmd[1:])}
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def server_tip_to_notify(self) -> dict[str, tuple[float, float]]:
        if not self.metrics_port:
            return {}
        try:
            return srv.tip_to_notify(self.metrics_port)
        except (OSError, ValueError) as exc:
            self.notes.append(f"/metrics not read: {exc}")
            self.metrics_port = 0
            return {}

    def fanout(self) -> dict[str, Any]:
        before = self.server_tip_to_notify()
        for c in self.children:
            c.send("arm")
        armed = sum(c.wait("armed", 30)[1] for c in self.children)
        trigger = self.children[0]
        trigger.send("block")
        _, found, sent = trigger.wait("block", 180)
        if sent is None:
            return {"error": "no miner to mine a block"}
        for c in self.children:
            c.send("fanout", 10.0)
        replies = [c.wait("fanout", 60) for c in self.children]
        arrivals = [t - sent for r in replies for t in array("d", r[1])]
        out = ms_summary(arrivals, ("p50", 0.5), ("p99", 0.99))
        out.update(connections=armed, received=len(arrivals))
        after = self.server_tip_to_notify()
        server = [(after[w][0] - before.get(w, (0, 0))[0]) / (after[w][1] - before.get(w, (0, 0))[1])
                  for w in after if after[w][1] > before.get(w, (0, 0))[1]]
        if server:
            # Inside the pool: template at the (worker's) job feed -> last notify handed to the kernel.
            out["server_tip_to_notify_ms"] = round(max(server) * 1000, 3)
        block_replies = [rep for r in replies for rep in r[3]]
        if block_replies:
            out["block_share_reply_ms"] = round((block_replies[0][0] - sent) * 1000, 3)
            out["block_share_result"] = block_replies[0][1]
        return out

    def measure(self) -> None:
        a = self.args
        window = self.submit_window(a.duration, block=not a.no_block)
        reports, start, end = window["reports"], window["start"], window["end"]
        r = self.result
        if window["fanout"] is not None:
            r["notify_fanout_ms"] = window["fanout"]
        if not reports:
            return
        r.update(summarise(reports))
        accepted = r["accepted"]
        if start and end and accepted:
            cpu = end.cpu_s - start.cpu_s
            r.update(server_cpu_s=round(cpu, 2), server_user_s=round(end.user_s - start.user_s, 2),
                     server_sys_s=round(end.sys_s - start.sys_s, 2),
                     server_cpu_cores=round(cpu / (end.at - start.at), 3),
                     server_cpu_us_per_share=round(cpu / accepted * 1e6, 1),
                     server_cpu_us_per_share_by_thread=per_unit(start.threads, end.threads, accepted))
            db_start, db_end = window["db"]
            if db_start and db_end:
                # Every process of the database server, other users' sessions included.
                r["database_cpu_us_per_share"] = round((db_end.cpu_s - db_start.cpu_s) / accepted * 1e6, 1)

    def finish(self) -> None:
        u = self.usage()
        if u:
            self.result.update(server_rss_mb=round(u.rss_kb / 1024, 1), server_pss_mb=round(u.pss_kb / 1024, 1),
                               server_processes=u.processes)
        self.result["load_average_after"] = srv.load_average()
        self.result["targets"] = targets(self.result)

    def close(self) -> None:
        for c in self.children:
            try:
                c.send("close")
                c.wait("closed", 30)
            except (OSError, TimeoutError, RuntimeError, EOFError):
                pass
            c.proc.join(5)
            if c.proc.is_alive():
                c.proc.terminate()
        if self.pool is not None:
            code = self.pool.stop()
            if code not in (0, None):
                self.notes.append(f"pool exited with {code}: {self.pool.stderr_tail(500)}")
        if self.scratch_db is not None:
            try:
                self.scratch_db.drop()
            except Exception as exc:       # the result stands; say what was left behind
                self.notes.append(f"scratch database {self.scratch_db.name} not dropped: {exc}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    with tempfile.TemporaryDirectory(prefix="kzpool-bench-", dir=args.workdir_base) as tmp:
        workdir = Path(tmp)
        try:
            host, port = bench.start_pool(workdir)
            bench.spawn(host, port)
            if args.idle:
                bench.idle_phase()
            bench.active_phase()
            bench.measure()
            bench.finish()
        finally:
            bench.close()
            if args.keep_workdir:
                kept = Path(tempfile.mkdtemp(prefix="kzpool-bench-kept-")) / "pool"
                shutil.copytree(workdir, kept)
                bench.notes.append(f"pool working directory copied to {kept}")
    if bench.notes:
        bench.result["notes"] = bench.notes
    if args.json:
        text = json.dumps(bench.result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        print(format_text(bench.result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
