"""What the process checks about itself before it listens: who it runs as, and how many files it may open.

A pool holds one socket per miner, so the open-file limit is its session limit. The soft limit is
raised to the hard limit (systemd's `LimitNOFILE=` sets both), and the session cap is lowered to what
fits, logged once, rather than failing with EMFILE at accept time under load.
Running as root is refused unless the operator says so: a network daemon that parses input from
anyone on the Internet has no use for root, and the systemd unit runs it as its own user.
"""
from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("kzpool.process")

# Descriptors kept back from the session cap: listeners, node RPC and ZMQ sockets, the database pool,
# the share-log spill file, the metrics and admin endpoints, logs.
RESERVED_FDS = 256


class RunningAsRoot(RuntimeError):
    """The process has uid 0 and neither `--allow-root` nor `process.allow_root = true` was given."""


@dataclass(frozen=True, slots=True)
class OpenFileLimit:
    soft_before: int
    soft: int
    hard: int        # resource.RLIM_INFINITY (-1) when unlimited


def check_not_root(allow: bool, euid: int | None = None) -> None:
    """Raises `RunningAsRoot` when running as root without permission; logs when root is allowed."""
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        return
    if not allow:
        raise RunningAsRoot("kzpool refuses to run as root: run it as its own user (deploy/systemd "
                            "does), or pass --allow-root / set process.allow_root = true")
    log.warning("running_as_root allowed=true reason=operator_override")


def raise_open_file_limit(wanted: int | None = None) -> OpenFileLimit:
    """Raises the soft RLIMIT_NOFILE to `wanted` (default: the hard limit) and reports the result.

    An unlimited hard limit is not a usable soft value on Linux (the kernel caps it at nr_open),
    so without `wanted` the soft limit goes to min(hard, /proc/sys/fs/nr_open).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if wanted is not None else _usable_hard(hard)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    new_soft = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new_soft = target
        except (ValueError, OSError) as exc:
            log.warning("open_file_limit_raise_failed soft=%d wanted=%d error=%s", soft, target, exc)
    result = OpenFileLimit(soft, new_soft, hard)
    log.info("open_file_limit soft_before=%d soft=%d hard=%s", soft, new_soft,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return result


def sessions_that_fit(max_sessions: int, open_files: int, reserved: int = RESERVED_FDS) -> int:
    """The session cap lowered to what the file limit allows (never below 1); logs when it lowers it."""
    fits = max(1, open_files - reserved)
    if fits >= max_sessions:
        return max_sessions
    log.warning("max_sessions_lowered configured=%d effective=%d open_files=%d reserved=%d",
                max_sessions, fits, open_files, reserved)
    return fits


def _usable_hard(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20     # Linux's default nr_open
