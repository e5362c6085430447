"""The licence registry's tables, on pool.models.Base so one metadata and one migration chain hold
the whole schema (revision 0002_registry creates them; 0007 gives each licence event its licence).

Personal data (IIN/BIN, legal names) is stored only as AES-GCM blobs (`*_enc`) next to a keyed
hash (`*_index`) for lookups; see compliance/pii.py. Everything else is plain: data-centre names and
addresses are business facts, licence numbers are public registry entries, logins are pseudonyms.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, Enum, ForeignKey, Integer, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from pool.models import Base

from .standing import LicenceStatus

INDEX_BYTES = 32    # HMAC-SHA256


def _status_enum() -> Enum:
    # VARCHAR, not a native PostgreSQL enum, as for blocks.status: a new state is a plain migration.
    return Enum(LicenceStatus, native_enum=False, length=16, name="licencestatus",
                values_callable=lambda members: [m.value for m in members])


class Datacentre(Base):
    __tablename__ = "datacentres"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    region: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(512))
    owner_iin_bin_enc: Mapped[bytes] = mapped_column(LargeBinary)
    owner_iin_bin_index: Mapped[bytes] = mapped_column(LargeBinary(INDEX_BYTES), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DatacentreNetwork(Base):
    """One registered IP range (CIDR) of a data centre; ranges never overlap across the registry."""
    __tablename__ = "datacentre_networks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    datacentre_id: Mapped[str] = mapped_column(ForeignKey("datacentres.id"), index=True)
    cidr: Mapped[str] = mapped_column(String(64), unique=True)   # canonical form, e.g. 10.1.0.0/16


class Licence(Base):
    """A licensed digital miner: the login it mines under and its licence."""
    __tablename__ = "licences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    iin_bin_enc: Mapped[bytes] = mapped_column(LargeBinary)
    iin_bin_index: Mapped[bytes] = mapped_column(LargeBinary(INDEX_BYTES), index=True)
    name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    licence_no: Mapped[str] = mapped_column(String(64), unique=True)   # opaque: the format is not published
    subtype: Mapped[str] = mapped_column(String(2))                    # "I" or "II"
    issued: Mapped[date] = mapped_column(Date)
    expires: Mapped[date] = mapped_column(Date)                        # exclusive: the first day without
    status: Mapped[LicenceStatus] = mapped_column(_status_enum(), default=LicenceStatus.ACTIVE)
    suspended_until: Mapped[date | None] = mapped_column(Date)          # exclusive: valid again from
    status_reason: Mapped[str | None] = mapped_column(String(512))
    status_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Bumped by every write (MAX + 1 under the registry's write lock, so it grows in commit order):
    # the watcher reads only rows changed since its last poll.
    change_seq: Mapped[int] = mapped_column(BigInteger, index=True)
    datacentre_id: Mapped[str] = mapped_column(ForeignKey("datacentres.id"), index=True)
    payout_address: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LicenceEvent(Base):
    """Every change of a licence, with the operator's reason: import, suspend, revoke, reinstate,
    renew; and the licence (number and dates) in force after it, so a renewal keeps the old one
    in the history (revision 0007)."""
    __tablename__ = "licence_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    licence_id: Mapped[int] = mapped_column(ForeignKey("licences.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(16))
    status: Mapped[LicenceStatus] = mapped_column(_status_enum())       # the status after the change
    suspended_until: Mapped[date | None] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(512))
    licence_no: Mapped[str] = mapped_column(String(64))
    issued: Mapped[date] = mapped_column(Date)
    expires: Mapped[date] = mapped_column(Date)                        # exclusive
