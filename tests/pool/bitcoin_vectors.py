"""The shared Bitcoin vectors (STRATUM-SPEC §4), found wherever the checkout puts them.

The canonical file is ../shared/vectors/bitcoin.json next to the repository; CI clones the repository
alone, so tests/vectors/bitcoin.json is a copy that test_hashing checks against the original when both exist.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_VECTORS = REPO_ROOT.parent / "shared" / "vectors" / "bitcoin.json"
COPIED_VECTORS = REPO_ROOT / "tests" / "vectors" / "bitcoin.json"


def load_vectors() -> dict[str, Any]:
    path = SHARED_VECTORS if SHARED_VECTORS.is_file() else COPIED_VECTORS
    return json.loads(path.read_text())


VECTORS = load_vectors()
