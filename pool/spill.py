"""The spill file: where the share log puts batches while the database is unavailable.

Append-only, one line per batch: `<crc32 hex> <json list of rows>\\n`, written with one write()
and made durable with fdatasync() before the batch is acknowledged. A crash can leave a torn last
line; it was never acknowledged, so `open()` cuts it off before anything is appended after it.
A bad line with good lines after it is not a torn write but damage: `open()` refuses the file
rather than drop the acknowledged shares behind it.
An exclusive flock stops two pool processes from sharing one file (the kernel drops it on SIGKILL).
The file knows nothing about shares: rows are JSON arrays the share log encodes and decodes.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Row = Sequence[Any]


class SpillLocked(RuntimeError):
    """Another process holds this spill file; each pool process needs its own path."""


class SpillCorrupt(RuntimeError):
    """A damaged line in the middle of the spill file: an operator must look before anything
    is replayed or appended."""


def encode_line(rows: Sequence[Row]) -> bytes:
    payload = json.dumps(rows, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_line(line: bytes) -> list[list[Any]] | None:
    """The rows of one complete line, or None if it is torn or corrupt."""
    if len(line) < 10 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        rows = json.loads(payload)
    except ValueError:
        return None
    return rows if isinstance(rows, list) else None


class SpillFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0  # bytes of complete, durable lines

    def open(self) -> None:
        """Lock the file, drop a torn tail, and leave it positioned for appends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpillLocked(f"spill file {self.path} is in use by another process") from None
        self._fd = fd
        valid_end = sum(len(line) for _, line in self._lines(0))
        actual_end = os.fstat(fd).st_size
        if valid_end != actual_end:
            with open(self.path, "rb") as reader:
                reader.seek(valid_end)
                tail = reader.read()
            if b"\n" in tail[:-1]:  # more lines after the bad one: damage, not a torn write
                self.close()
                raise SpillCorrupt(f"spill file {self.path}: damaged line at byte {valid_end}, "
                                   f"{len(tail)} bytes from there on; move the file aside and "
                                   "recover its lines by hand")
            log.warning("event=spill_torn_tail path=%s kept_bytes=%d dropped_bytes=%d",
                        self.path, valid_end, len(tail))
            os.ftruncate(fd, valid_end)
            os.fsync(fd)
        self.size = valid_end
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        # A newly created file is only durable once its directory entry is.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _lines(self, offset: int) -> Iterator[tuple[list[list[Any]], bytes]]:
        """Complete, valid lines from `offset`, stopping at the first torn or corrupt one."""
        assert self._fd is not None
        with open(os.dup(self._fd), "rb") as reader:
            reader.seek(offset)
            for line in reader:
                rows = decode_line(line)
                if rows is None:
                    return
                yield rows, line

    def append(self, line: bytes) -> None:
        """Write one encoded line and fdatasync it (blocking; callers run it in a thread)."""
        assert self._fd is not None, "spill file not open"
        written = os.pwrite(self._fd, line, self.size)
        while written < len(line):  # short writes are legal; finish the line in place
            written += os.pwrite(self._fd, line[written:], self.size + written)
        os.fdatasync(self._fd)
        self.size += len(line)

    def read(self, offset: int, max_rows: int) -> tuple[list[list[Any]], int]:
        """Rows of whole lines from `offset`, at least one line and then up to `max_rows`;
        returns the rows and the offset after the last line read."""
        rows: list[list[Any]] = []
        for line_rows, line in self._lines(offset):
            if rows and len(rows) + len(line_rows) > max_rows:
                break
            if offset + len(line) > self.size:
                break  # not yet durable (cannot happen with one writer, kept as a guard)
            rows.extend(line_rows)
            offset += len(line)
        return rows, offset

    def clear(self) -> None:
        """Empty the file once every line is in the database."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None
