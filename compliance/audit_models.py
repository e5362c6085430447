"""The audit log table (migration pool/migrations/versions/0003_audit.py).

Append-only by contract: rows are inserted by compliance/audit_store.py and never updated or
deleted. `seq` is the primary key and is assigned by the writer as head + 1 inside the inserting
transaction, so a second writer that somehow read the same head fails on the key instead of
forking the chain. The payload is stored as the exact canonical JSON text that was hashed (not a
JSON/JSONB column, which would reorder keys and change the bytes).
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pool.models import Base


class AuditRecord(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index(None, "time_us"),             # export --from/--to
        Index(None, "kind", "seq"),         # the last checkpoint, at every batch
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger)        # UTC microseconds since the epoch
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)              # canonical JSON, as hashed
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
