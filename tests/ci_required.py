"""What the suite needs from the machine (PostgreSQL, Prometheus, systemd, openssl, bcoin): on a
developer's machine a missing one skips its tests with the reason; under CI=true, where .ci/run
provides them all, it fails, so a missing service can never pass as a skip."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str, what: str) -> NoReturn:
    """Skip (`reason`) here, fail in CI: CI must run `what`."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run {what}", pytrace=False)
    pytest.skip(f"{reason}; these tests run in CI")
