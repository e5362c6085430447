"""The pool under test for `kzpool bench stratum`: start it as a subprocess, and read its CPU and memory
from the kernel's own accounting (/proc), summed over its process tree (a pool with worker processes).

CPU is utime + stime of every thread of every process in the tree (what `top` charges the pool), so
the load generator running on the same machine does not inflate it. Memory is RSS (VmRSS) and PSS
(smaps_rollup: shared pages split between the processes that map them, so forked workers are not
counted twice) summed over the tree.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_overrides(port: int, metrics_port: int, difficulty: float, simnet_bits: str) -> list[str]:
    """`--set` values that make a pool fit for load: loopback, a free port, a fixed tiny difficulty
    (min = start = max, so vardiff never moves it), an easy simulated chain so the generator can mine
    a block on demand, /metrics on loopback (read twice, around the block), no admin endpoint, quiet
    logs. The share log and the audit log stay on."""
    return ['stratum.host="127.0.0.1"', f"stratum.port={port}", f"stratum.start_difficulty={difficulty!r}",
            f"stratum.min_difficulty={difficulty!r}", f"stratum.max_difficulty={difficulty!r}",
            "stratum.max_sessions=1000000", f'simnet.bits="{simnet_bits}"', 'metrics.host="127.0.0.1"',
            f"metrics.port={metrics_port}", "admin.enabled=false", 'log.level="WARNING"']


_SAMPLE = re.compile(r'^(kzpool_tip_to_notify_seconds_(?:sum|count))(?:\{([^}]*)\})?\s+(\S+)$')


def tip_to_notify(metrics_port: int) -> dict[str, tuple[float, float]]:
    """{worker label: (sum, count)} of the pool's kzpool_tip_to_notify_seconds histogram: the time
    from a new tip's template reaching a (worker's) job feed to its last mining.notify written."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            label = re.search(r'worker="([^"]*)"', m.group(2) or "")
            worker = label.group(1) if label else "0"
            pair = out.setdefault(worker, [0.0, 0.0])
            pair[0 if m.group(1).endswith("_sum") else 1] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def run_help() -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "pool.cli", "run", "--help"], env=env, capture_output=True,
                         text=True, timeout=60)
    return out.stdout


def supports_workers() -> bool:
    """True once `kzpool run` has a --workers option (several processes sharing the port)."""
    return "--workers" in run_help()


@dataclass
class PoolProcess:
    proc: subprocess.Popen
    workdir: Path
    port: int
    args: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, limit: int = 3000) -> str:
        try:
            return (self.workdir / "pool.stderr").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_listening(self, timeout_s: float = 60.0) -> float:
        """Seconds until the port accepts a connection; raises with the pool's stderr if it died."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pool exited with {self.proc.returncode}: {self.stderr_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pool did not listen on {self.port} within {timeout_s:g} s: {self.stderr_tail()}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_pool(workdir: Path, port: int, sets: list[str], workers: int = 0) -> PoolProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-m", "pool.cli", "run"] + [a for s in sets for a in ("--set", s)]
    if workers:
        args += ["--workers", str(workers)]
    stderr = open(workdir / "pool.stderr", "wb")
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    stderr.close()
    return PoolProcess(proc, workdir, port, args)


# ---- /proc accounting -------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    return text[text.rindex(")") + 2:].split()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of every process listed (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])                        # stat field 14
            system += int(fields[12])                      # stat field 15
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def thread_cpu_seconds(pids: list[int]) -> dict[str, float]:
    """User and system CPU seconds of each process's main thread (tid == pid) and of all its other
    threads together (in the pool: the SQLite connection thread, the default executor)."""
    acc = {"main_user": 0, "main_sys": 0, "other_user": 0, "other_sys": 0}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            which = "main" if int(tid) == pid else "other"
            acc[which + "_user"] += int(fields[11])
            acc[which + "_sys"] += int(fields[12])
    return {k: v / CLOCK_TICKS for k, v in acc.items()}


def _kb_field(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over the processes."""
    rss = sum(_kb_field(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(_kb_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return rss, pss


@dataclass(frozen=True)
class Usage:
    at: float               # time.monotonic()
    user_s: float
    sys_s: float
    rss_kb: int
    pss_kb: int
    processes: int
    threads: dict[str, float]

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def usage(pid: int) -> Usage:
    pids = process_tree(pid)
    rss, pss = memory_kb(pids)
    return Usage(time.monotonic(), *cpu_seconds(pids), rss, pss, len(pids), thread_cpu_seconds(pids))


class ScratchPostgres:
    """A fresh PostgreSQL database for one run (the pool migrates it at start in demo mode), dropped
    afterwards; `postmaster_pid` is set when the server runs on this machine, so its CPU can be read."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"kzbench_{os.getpid()}"
        self.postmaster_pid: int | None = None

    @property
    def url(self) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{base}/{self.name}"

    def _run(self, *statements: str) -> int | None:
        """Runs the statements; returns the postmaster's pid when the server is on this machine (the
        parent of our backend process, read while the backend still exists)."""
        import asyncio

        import asyncpg  # type: ignore[import-untyped]

        async def go() -> int | None:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                for sql in statements:
                    await conn.execute(sql)
                fields = _stat_fields(int(await conn.fetchval("SELECT pg_backend_pid()")))
                return int(fields[1]) if fields is not None else None
            finally:
                await conn.close()
        return asyncio.run(go())

    def create(self) -> str:
        self.postmaster_pid = self._run(f"DROP DATABASE IF EXISTS {self.name}", f"CREATE DATABASE {self.name}")
        return self.url

    def drop(self) -> None:
        self._run(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def nofile_hard() -> int:
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def machine() -> dict[str, object]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_kb = _kb_field("/proc/meminfo", "MemTotal:")
    return {"cpu_model": model, "cpus": os.cpu_count(), "mem_gib": round(mem_kb / 2**20, 1),
            "kernel": os.uname().release, "python": sys.version.split()[0],
            "nofile_hard": nofile_hard()}
