"""Who the process runs as, and its open-file limit (raised in a child process with a lowered soft limit)."""
from __future__ import annotations

import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pool.process_limits import RunningAsRoot, check_not_root, raise_open_file_limit, sessions_that_fit

ROOT = Path(__file__).resolve().parents[2]


def test_root_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture):
    with pytest.raises(RunningAsRoot, match="--allow-root"):
        check_not_root(False, euid=0)
    check_not_root(False, euid=1000)
    with caplog.at_level(logging.WARNING, "kzpool.process"):
        check_not_root(True, euid=0)
    assert "running_as_root allowed=true" in caplog.text


def test_soft_limit_is_raised_to_the_hard_limit():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 64 if hard == resource.RLIM_INFINITY else min(64, hard)
    # A child whose soft limit starts low: the call must raise it and report both values.
    script = ("import resource; from pool.process_limits import raise_open_file_limit as r; l = r(); "
              "print(l.soft_before, l.soft, l.hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)))
    before, soft, reported_hard, actual = map(int, out.stdout.split())
    assert before == low and soft == actual and reported_hard == hard
    assert soft > low and (hard == resource.RLIM_INFINITY or soft == hard)


def test_wanted_limit_below_the_current_one_changes_nothing():
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_open_file_limit(wanted=1)
    assert limit.soft == limit.soft_before == soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_session_cap_fits_the_file_limit(caplog: pytest.LogCaptureFixture):
    assert sessions_that_fit(100_000, 1_048_576) == 100_000
    with caplog.at_level(logging.WARNING, "kzpool.process"):
        assert sessions_that_fit(100_000, 1024, reserved=256) == 768
    assert "max_sessions_lowered configured=100000 effective=768" in caplog.text
    assert sessions_that_fit(10, 100, reserved=256) == 1
