"""The payout tables, on pool.models.Base (revision 0004_payouts creates them).

- `ledger_txns` / `ledger_entries`: the double-entry ledger. Append-only (triggers refuse UPDATE
  and DELETE); every transaction's entries sum to zero; balances are sums, never stored. A
  transaction's `ref` is its idempotency key: posting the same ref twice is a no-op.
- `payout_rounds`: where each credited block's share window ended (PROP starts the next round there).
- `payout_runs` / `payout_items`: a payout run, committed before anything is sent; its status is
  the only mutable state (prepared -> sent | psbt -> sent | cancelled | failed; an operator's
  cancel of a PSBT run records who and why in `note` and moves its `psbt_path`; a cancelled PSBT
  run whose transaction reaches the wallet anyway goes cancelled -> sent).
- `pps_worker_minutes` / `pps_accounts`: what PPS/FPPS already credited, per worker and minute and
  per login cumulative, so crediting is idempotent and late shares are credited as a difference.
- `payout_exchange_deposits`: a miner's deposit address at a licensed exchange and its share.
- `report_submissions` / `report_submitted_rows`: what the revenue bodies' endpoint accepted.

No foreign keys to the pool's or the registry's tables: blocks, workers and licences are named by
hash, id and login, so those tables' owners can rebuild or empty them without touching money.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import (BigInteger, Date, Float, ForeignKey, Index, Integer, LargeBinary, String, Text)
from sqlalchemy.orm import Mapped, mapped_column

from pool.models import Base

# SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer, "sqlite")


class LedgerTxn(Base):
    __tablename__ = "ledger_txns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ref: Mapped[str] = mapped_column(String(160), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    time_us: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str] = mapped_column(Text)          # canonical JSON: what the posting rested on


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (Index(None, "account", "txn_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    txn_id: Mapped[int] = mapped_column(ForeignKey("ledger_txns.id"), index=True)
    account: Mapped[str] = mapped_column(String(160))
    amount_sats: Mapped[int] = mapped_column(BigInteger)        # into the account (< 0: out of it)
    commission_sats: Mapped[int] = mapped_column(BigInteger)    # pool commission charged on this amount


class PayoutRound(Base):
    __tablename__ = "payout_rounds"

    block_hash: Mapped[str] = mapped_column(String(64), primary_key=True)   # display hex
    height: Mapped[int] = mapped_column(Integer)
    scheme: Mapped[str] = mapped_column(String(8))
    end_time_us: Mapped[int] = mapped_column(BigInteger, index=True)
    end_share_hash: Mapped[bytes] = mapped_column(LargeBinary(32))    # empty: the share was not found
    end_worker_id: Mapped[int] = mapped_column(Integer)               # 0: not found
    credited_us: Mapped[int] = mapped_column(BigInteger)


class PayoutRun(Base):
    __tablename__ = "payout_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)        # uuid4 hex
    label: Mapped[str] = mapped_column(String(64), unique=True)          # the wallet comment
    method: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)
    sent_us: Mapped[int | None] = mapped_column(BigInteger)
    total_sats: Mapped[int] = mapped_column(BigInteger)
    txid: Mapped[str | None] = mapped_column(String(64))
    network_fee_sats: Mapped[int | None] = mapped_column(BigInteger)
    psbt_path: Mapped[str | None] = mapped_column(String(512))
    note: Mapped[str] = mapped_column(Text, default="")


class PayoutItem(Base):
    __tablename__ = "payout_items"

    run_id: Mapped[str] = mapped_column(ForeignKey("payout_runs.id"), primary_key=True)
    item_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), index=True)
    licence_no: Mapped[str] = mapped_column(String(64))
    licence_issued: Mapped[date] = mapped_column(Date)
    amount_sats: Mapped[int] = mapped_column(BigInteger)          # the whole payout to this miner
    commission_sats: Mapped[int] = mapped_column(BigInteger)      # commission charged on it
    wallet_address: Mapped[str] = mapped_column(String(128))
    wallet_sats: Mapped[int] = mapped_column(BigInteger)
    exchange_id: Mapped[str] = mapped_column(String(64), default="")
    exchange_address: Mapped[str] = mapped_column(String(128), default="")
    exchange_sats: Mapped[int] = mapped_column(BigInteger, default=0)
    exchange_share_bps: Mapped[int] = mapped_column(Integer, default=0)


class PpsWorkerMinute(Base):
    __tablename__ = "pps_worker_minutes"

    worker_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    minute_s: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    login: Mapped[str] = mapped_column(String(128))
    shares: Mapped[int] = mapped_column(BigInteger)
    value_usat: Mapped[int] = mapped_column(BigInteger)
    # The rate this minute was first credited at; shares stored late in it are valued alike.
    network_difficulty: Mapped[float] = mapped_column(Float(53))
    block_value_sats: Mapped[int] = mapped_column(BigInteger)


class PpsAccount(Base):
    __tablename__ = "pps_accounts"

    login: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Cumulative PPS value credited: whole sats plus micro-satoshis (0..999999) carried.
    value_sats: Mapped[int] = mapped_column(BigInteger)
    carry_usat: Mapped[int] = mapped_column(Integer)


class ExchangeDeposit(Base):
    __tablename__ = "payout_exchange_deposits"

    login: Mapped[str] = mapped_column(String(64), primary_key=True)
    exchange_id: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(128))
    share_bps: Mapped[int] = mapped_column(Integer)
    updated_us: Mapped[int] = mapped_column(BigInteger)


class ReportSubmission(Base):
    __tablename__ = "report_submissions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    schema: Mapped[str] = mapped_column(String(32))
    period_from: Mapped[date] = mapped_column(Date)
    period_to: Mapped[date] = mapped_column(Date)
    rows: Mapped[int] = mapped_column(Integer)
    body_sha256: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))            # accepted | rejected | failed
    http_status: Mapped[int] = mapped_column(Integer)          # 0: no HTTP answer
    attempts: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)                # the endpoint's answer, cut to 2 KiB
    submitted_us: Mapped[int] = mapped_column(BigInteger)


class ReportSubmittedRow(Base):
    __tablename__ = "report_submitted_rows"

    distribution_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("report_submissions.id"))
