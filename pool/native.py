"""The C share hasher (`pool._kzhash`) and the choice between it and the pure-Python reference.

The extension is optional (setup.py builds it with `optional=True`): when it was not built, cannot be
imported, or `KZPOOL_NO_C=1` is set, `select_hasher()` returns `pool.validation.PythonShareHasher`
instead and logs once which hasher runs and why. Both produce identical `ShareResult`s
(tests/test_native_hashing.py checks this on the shared vectors and on random inputs).
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Sequence

from stratum.interfaces import ShareHasher
from stratum.jobs import Job, ShareResult, Submission

log = logging.getLogger("kzpool.native")

NO_C_ENV = "KZPOOL_NO_C"

_announced = False


def c_disabled_by_env() -> bool:
    """True when the operator forces the pure-Python path (KZPOOL_NO_C=1)."""
    return os.environ.get(NO_C_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_extension() -> tuple[ModuleType | None, str]:
    """(module, "") when the C extension can be used, else (None, why not)."""
    if c_disabled_by_env():
        return None, f"{NO_C_ENV}=1"
    try:
        from . import _kzhash
    except ImportError as exc:      # not built (no compiler at install time) or built for another Python
        return None, f"import_failed:{type(exc).__name__}"
    return _kzhash, ""


class CShareHasher:
    """`ShareHasher` on the C extension: one call per batch, hashing with the GIL released."""
    name = "c"

    def __init__(self, module: ModuleType | None = None) -> None:
        if module is None:
            from . import _kzhash as module
        self._kzhash = module
        self.backend: str = module.backend()      # "sha-ni" or "portable", chosen by cpuid

    def hash_batch(self, job: Job, subs: Sequence[Submission]) -> list[ShareResult]:
        # Submissions go in as they are: the C side reads their slots directly, which is cheaper
        # than building a tuple per share here. Submission.version is the final nVersion, so the
        # default version_mask (all bits from the submission) applies.
        return self._kzhash.validate_batch(
            job.coinb1, job.coinb2, job.merkle_branch, job.version, job.prevhash, job.nbits,
            job.network_target, subs, result_type=ShareResult)


def select_hasher() -> ShareHasher:
    """The C hasher when available, else the pure-Python one; the first call logs the choice."""
    global _announced
    module, why_not = load_extension()
    hasher: ShareHasher
    if module is not None:
        c_hasher = CShareHasher(module)
        hasher = c_hasher
        message, args = "share_hasher name=c backend=%s", (c_hasher.backend,)
    else:
        from .validation import PythonShareHasher
        hasher = PythonShareHasher()
        message, args = "share_hasher name=python reason=%s", (why_not,)
    if not _announced:
        _announced = True
        (log.info if module is not None or c_disabled_by_env() else log.warning)(message, *args)
    return hasher
