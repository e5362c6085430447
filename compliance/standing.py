"""Whether a licence lets its miner mine today: one pure function, shared by the authorizer, the
watcher and the CLI so that all three judge alike.

Days are counted in Kazakhstan time: all of Kazakhstan is UTC+5 since 1 March 2024, and a fixed
offset needs no tzdata (only "today" is ever judged, never a date before 2024).
End dates are exclusive: a licence issued 2023-05-01 with the default 3 years has `expires`
2026-05-01, its first day without a licence; `suspended_until` is the first day it is valid again.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from enum import Enum
from typing import Callable

KZ_TIME = timezone(timedelta(hours=5), "UTC+05")
LICENCE_YEARS = 3

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def kz_today(now_utc: datetime) -> date:
    """The calendar date in Kazakhstan at the aware instant `now_utc`."""
    return now_utc.astimezone(KZ_TIME).date()


def default_expiry(issued: date) -> date:
    """issued + 3 years; a licence issued on 29 February runs through 28 February."""
    try:
        return issued.replace(year=issued.year + LICENCE_YEARS)
    except ValueError:
        return date(issued.year + LICENCE_YEARS, 3, 1)


class LicenceStatus(str, Enum):
    """The status recorded in the registry (the effective one also depends on today's date)."""
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"


# Refusal reason names (Refusal.reason, audit payloads, watcher callbacks).
VALID = "licence_valid"
NOT_YET_VALID = "licence_not_yet_valid"
EXPIRED = "licence_expired"
SUSPENDED = "licence_suspended"
REVOKED = "licence_revoked"


@dataclass(frozen=True, slots=True)
class LicenceDates:
    """The fields that decide standing, as stored."""
    login: str
    status: LicenceStatus
    issued: date
    expires: date
    suspended_until: date | None
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Standing:
    valid: bool
    reason: str        # VALID or one of the refusal names above
    text: str          # human text for the miner and the operator, no personal data


def standing(lic: LicenceDates, today: date) -> Standing:
    """Revoked beats everything; then an explicit 'expired', then dates, then a suspension."""
    note = f" ({lic.status_reason})" if lic.status_reason else ""
    if lic.status is LicenceStatus.REVOKED:
        return Standing(False, REVOKED, f"the licence of login '{lic.login}' is revoked{note}")
    if lic.status is LicenceStatus.EXPIRED or today >= lic.expires:
        return Standing(False, EXPIRED, f"the licence of login '{lic.login}' expired on {lic.expires.isoformat()}"
                        + (note if lic.status is LicenceStatus.EXPIRED else ""))
    if today < lic.issued:
        return Standing(False, NOT_YET_VALID,
                        f"the licence of login '{lic.login}' is valid from {lic.issued.isoformat()}")
    if lic.status is LicenceStatus.SUSPENDED and (lic.suspended_until is None or today < lic.suspended_until):
        until = f" until {lic.suspended_until.isoformat()}" if lic.suspended_until else ""
        return Standing(False, SUSPENDED, f"the licence of login '{lic.login}' is suspended{until}{note}")
    return Standing(True, VALID, f"the licence of login '{lic.login}' is valid until {lic.expires.isoformat()}")


def effective_status(lic: LicenceDates, today: date) -> str:
    """The status an operator should see today: 'expired' once the date passed, 'active' once a
    suspension ended, 'not_yet_valid' before the issue date."""
    s = standing(lic, today)
    return {VALID: LicenceStatus.ACTIVE.value, NOT_YET_VALID: "not_yet_valid", EXPIRED: LicenceStatus.EXPIRED.value,
            SUSPENDED: LicenceStatus.SUSPENDED.value, REVOKED: LicenceStatus.REVOKED.value}[s.reason]
