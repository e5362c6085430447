"""Tables for location attestation, electricity schedules, curtailment orders and energy
accounting, on pool.models.Base so one metadata and one migration chain hold the whole schema
(revision 0005_power creates them).

Times are integer microseconds (or whole seconds for hour buckets) since the Unix epoch, UTC, as
in the shares table: no per-row datetime conversion, and Kazakhstan's hours (UTC+5, whole hours)
start on UTC hour boundaries, so an hour bucket is `time_us // 3_600_000_000` either way.
Dates that the law counts in Kazakhstan time (a day-ahead schedule's date) are KZ calendar dates.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, Date, Float, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pool.models import Base, WorkerStatsMinute


class LocationAttestation(Base):
    """One location check of one pool node: the verdict and every piece of evidence (JSON)."""
    __tablename__ = "location_attestations"
    __table_args__ = (Index(None, "node_id", "checked_us"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64))
    datacentre_id: Mapped[str] = mapped_column(String(64))       # "" when the node names none
    checked_us: Mapped[int] = mapped_column(BigInteger)
    verdict: Mapped[str] = mapped_column(String(8))              # pass | fail | unknown
    mode: Mapped[str] = mapped_column(String(8))                 # enforce | warn, at the time
    evidence: Mapped[str] = mapped_column(Text)                  # JSON list of Evidence


class NodeShareMinute(Base):
    """Accepted shares per node per minute: which nodes produced shares in a payout window (the
    shares table does not say which process accepted a share)."""
    __tablename__ = "node_share_minutes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute_s: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shares: Mapped[int] = mapped_column(BigInteger)


class DayAheadHour(Base):
    """One hour of a day-ahead electricity schedule for a data centre or a login (KEGOC's
    day-ahead allotment); allowed_kw 0 means grid power is not allotted in that hour, above 0 the
    hour's grid energy may reach allowed_kw x 1 h (compliance/hourly_volume.py)."""
    __tablename__ = "day_ahead_hours"

    day: Mapped[date] = mapped_column(Date, primary_key=True)               # Kazakhstan date
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)        # datacentre | login
    target: Mapped[str] = mapped_column(String(128), primary_key=True)      # data centre id or login
    hour: Mapped[int] = mapped_column(SmallInteger, primary_key=True)       # 0..23, Kazakhstan time
    allowed_kw: Mapped[float] = mapped_column(Float(53))
    # Every import gets a higher number: pollers read MAX(import_seq) to see that something changed.
    import_seq: Mapped[int] = mapped_column(BigInteger, index=True)


class CurtailmentOrder(Base):
    """An operator's order to stop mining for a data centre or a login in [starts_us, ends_us).
    Never deleted: a cancellation sets cancelled_us and its reason, so the record stays."""
    __tablename__ = "curtailment_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))                          # datacentre | login
    target: Mapped[str] = mapped_column(String(128))
    starts_us: Mapped[int] = mapped_column(BigInteger)
    ends_us: Mapped[int] = mapped_column(BigInteger, index=True)
    reason: Mapped[str] = mapped_column(String(512))
    operator: Mapped[str] = mapped_column(String(64))
    created_us: Mapped[int] = mapped_column(BigInteger)
    cancelled_us: Mapped[int | None] = mapped_column(BigInteger)
    cancel_reason: Mapped[str | None] = mapped_column(String(512))


class EnergyHour(Base):
    """Estimated energy of one login in one hour, from its accepted work (compliance/energy.py).
    Recomputed from shares and worker_stats_minute, so writing it again is harmless."""
    __tablename__ = "energy_hours"

    login: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour_s: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)   # UTC hour start
    datacentre_id: Mapped[str] = mapped_column(String(64))                 # "" when not registered
    shares: Mapped[int] = mapped_column(BigInteger)
    difficulty_sum: Mapped[float] = mapped_column(Float(53))
    j_per_th: Mapped[float] = mapped_column(Float(53))                     # the efficiency applied
    kwh: Mapped[float] = mapped_column(Float(53))
    outside_minutes: Mapped[int] = mapped_column(Integer)                  # minutes with shares, not allotted
    computed_us: Mapped[int] = mapped_column(BigInteger)


# Energy accounting scans worker_stats_minute by time (hours, months); that table's key starts
# with worker_id. Declared here, created by revision 0005, because energy accounting is its user.
WORKER_STATS_MINUTE_TIME_INDEX = Index("ix_worker_stats_minute_minute_s", WorkerStatsMinute.minute_s)

POWER_TABLES = ("energy_hours", "curtailment_orders", "day_ahead_hours", "node_share_minutes",
                "location_attestations")
