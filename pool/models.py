"""Database schema: SQLAlchemy 2.x typed models. Alembic (pool/migrations/) owns the live schema;
a change here ships with a new revision in the same commit.

Hot-path choices (the shares table takes every accepted share, 10^4-10^5 rows per second):
- share times are integer microseconds since the Unix epoch (UTC): 8 bytes, no per-row datetime
  conversion, and per-minute bucketing is integer division on both SQLite and PostgreSQL;
- hashes and extranonces are stored as bytes, half the size of their hex;
- a share names its worker by id; the names live once in accounts/workers;
- the primary key is the idempotency key (time_us, worker_id, share_hash): no surrogate id, whose
  sequence and index would cost a fifth of PostgreSQL's insert time; time first, so inserts append
  at the end of the key and export, compaction and payout windows scan by its prefix. The only
  other index is a partial one on the hashes of block shares.
"""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Index, Integer,
                        LargeBinary, MetaData, PrimaryKeyConstraint, String, UniqueConstraint, func, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Constraint names are fixed so that Alembic migrations can refer to them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MICROS_PER_SECOND = 1_000_000


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BlockStatus(str, enum.Enum):
    """Life of a found block: candidate (share met the network target) -> submitted (sent to the
    nodes) -> accepted (a node took it) -> confirmed (matured) or orphaned (lost a reorg)."""
    CANDIDATE = "candidate"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    CONFIRMED = "confirmed"
    ORPHANED = "orphaned"


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Worker(Base):
    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # The full name the miner sent, e.g. "alice.rig1".
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Share(Base):
    __tablename__ = "shares"
    __table_args__ = (
        # Time first: every insert lands at the right-hand end of the key, so a commit dirties a
        # few pages instead of one random page per share (measured: ~5x less SQLite CPU per share
        # at 500k shares, docs/storage.md). The key is also the idempotency key: a replay after
        # a crash or a spill carries the share's original time, so it is inserted at most once.
        # A share cannot reach two rows with different times: its job and extranonce1 are gone
        # once the session or the process that issued them is.
        PrimaryKeyConstraint("time_us", "worker_id", "share_hash"),
        # Block shares are looked up by hash (payout windows end at the block's share): a partial
        # index holds only those few rows. The predicates are the forms each database compares
        # a query's `is_block = true` with.
        Index("ix_shares_block_hash", "share_hash", sqlite_where=text("is_block = 1"),
              postgresql_where=text("is_block")),
    )

    time_us: Mapped[int] = mapped_column(BigInteger)
    worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id"))
    share_hash: Mapped[bytes] = mapped_column(LargeBinary(32))  # as displayed
    job_id: Mapped[str] = mapped_column(String(64))
    height: Mapped[int] = mapped_column(Integer)
    difficulty: Mapped[float] = mapped_column(Float(53))
    is_block: Mapped[bool] = mapped_column(Boolean)
    extranonce1: Mapped[bytes] = mapped_column(LargeBinary(32))
    extranonce2: Mapped[bytes] = mapped_column(LargeBinary(32))
    # 32-bit unsigned header fields overflow PostgreSQL's signed INTEGER.
    ntime: Mapped[int] = mapped_column(BigInteger)
    nonce: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger)
    peer: Mapped[str] = mapped_column(String(64))


class Block(Base):
    __tablename__ = "blocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    height: Mapped[int] = mapped_column(Integer, index=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)  # display hex
    # VARCHAR, not a native PostgreSQL enum: adding a state later is then a plain migration.
    status: Mapped[BlockStatus] = mapped_column(
        Enum(BlockStatus, native_enum=False, length=16,
             values_callable=lambda members: [m.value for m in members]),
        default=BlockStatus.CANDIDATE)
    reward_sats: Mapped[int] = mapped_column(BigInteger)
    finder_worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"))
    network_difficulty: Mapped[float] = mapped_column(Float(53))
    found_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                 server_default=func.now(), onupdate=func.now())


class WorkerStatsMinute(Base):
    """Raw shares folded per worker per minute by compaction (pool/compaction.py)."""
    __tablename__ = "worker_stats_minute"

    worker_id: Mapped[int] = mapped_column(ForeignKey("workers.id"), primary_key=True)
    minute_s: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # unix seconds, minute start
    shares: Mapped[int] = mapped_column(BigInteger)
    difficulty_sum: Mapped[float] = mapped_column(Float(53))
    blocks: Mapped[int] = mapped_column(Integer)
