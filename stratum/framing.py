"""Newline framing with a byte cap (STRATUM-SPEC §1.1): bytes in, complete lines out.

A peer that sends more than `max_line_bytes` without a newline gets `LineTooLong`, so a flood can
never grow the buffer without bound.
"""
from __future__ import annotations

from .errors import LineTooLong

DEFAULT_MAX_LINE_BYTES = 16 * 1024   # far above any real Stratum message; a notify with a 12-level branch is ~1.5 KiB


class LineFramer:
    __slots__ = ("max_line_bytes", "_buffer")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 64:
            raise ValueError("max_line_bytes must be at least 64")
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Returns the complete lines in `data` (without `\\n` or `\\r\\n`); empty lines are dropped."""
        buf = self._buffer
        end = len(data) - 1
        if not buf and end >= 0 and data.find(b"\n") == end:
            # The usual case: exactly one whole line, nothing buffered; no copy into the buffer.
            if end > self.max_line_bytes:
                raise LineTooLong(f"line exceeds max_line_bytes={self.max_line_bytes} ({end} bytes)")
            line = data[:end].rstrip(b"\r")
            return [line] if line.strip() else []
        buf += data
        if b"\n" not in data:
            if len(buf) > self.max_line_bytes:
                size = len(buf)
                buf.clear()
                raise LineTooLong(f"line exceeds max_line_bytes={self.max_line_bytes} ({size} bytes buffered)")
            return []
        *lines, rest = bytes(buf).split(b"\n")
        buf.clear()
        buf += rest
        out: list[bytes] = []
        for line in lines:
            if len(line) > self.max_line_bytes:
                raise LineTooLong(f"line exceeds max_line_bytes={self.max_line_bytes} ({len(line)} bytes)")
            line = line.rstrip(b"\r")
            if line.strip():
                out.append(line)
        if len(buf) > self.max_line_bytes:
            size = len(buf)
            buf.clear()
            raise LineTooLong(f"line exceeds max_line_bytes={self.max_line_bytes} ({size} bytes buffered)")
        return out

    @property
    def buffered(self) -> int:
        return len(self._buffer)
