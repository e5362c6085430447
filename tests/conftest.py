"""Every test runs in its own empty working directory, so the embedded default's ./var/ (SQLite
database, spill file, demo keys) is fresh per test and never lands in the checkout."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
