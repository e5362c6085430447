"""Extranonce1 allocation: unique per live connection, with session resume (STRATUM-SPEC §1.5).

The value space is `prefix || counter`: the prefix identifies the process (or machine) so that
several pool processes sharing one port or one database never hand out the same extranonce1.
"""
from __future__ import annotations


class ExtranonceExhausted(RuntimeError):
    pass


class Extranonce1Allocator:
    def __init__(self, size: int = 4, prefix: bytes = b"") -> None:
        if not 1 <= size <= 16:
            raise ValueError("extranonce1 size must be 1..16 bytes")
        if len(prefix) >= size:
            raise ValueError("extranonce1 prefix must be shorter than the extranonce1 size")
        self.size = size
        self.prefix = prefix
        self._counter_bytes = size - len(prefix)
        self._space = 1 << (8 * self._counter_bytes)
        self._next = 0
        self._in_use: set[bytes] = set()

    def _make(self, n: int) -> bytes:
        return self.prefix + n.to_bytes(self._counter_bytes, "big")

    def allocate(self, resume: bytes | None = None) -> bytes:
        """A free extranonce1; `resume` is given back when it is ours and nobody holds it now."""
        if (resume is not None and len(resume) == self.size and resume.startswith(self.prefix)
                and resume not in self._in_use):
            self._in_use.add(resume)
            return resume
        if len(self._in_use) >= self._space:
            raise ExtranonceExhausted("every extranonce1 value is in use")
        while True:
            value = self._make(self._next)
            self._next = (self._next + 1) % self._space
            if value not in self._in_use:
                self._in_use.add(value)
                return value

    def release(self, value: bytes) -> None:
        self._in_use.discard(value)

    def __len__(self) -> int:
        return len(self._in_use)
