"""The pool's own accreditation (Order 142/НҚ, renamed by 404/НҚ): number, issue date, expiry and
issuing authority, from `[accreditation]` in the config.

Judged in Kazakhstan days like licences, with the same convention: `expires` is the first day
(Kazakhstan time) the accreditation no longer holds. From `warn_days` before that the pool logs a
warning once a day (and records the change in the audit log); once expired, in production mode,
it accepts no new miners (`accepting_new_miners()`, read by the authorizer gate) and payouts are
blocked (compliance/location_gate.py). In demo mode nothing is enforced and a missing
accreditation is normal; in production a missing or not-yet-valid one counts as expired.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable

from . import audit_events
from .power_plan import setting
from .standing import Clock, kz_today, utc_now
from .background_task import stop_background_task

log = logging.getLogger("kzpool.compliance.accreditation")

WARN_DAYS = 30
VALID = "valid"
EXPIRING = "expiring"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
MISSING = "missing"
ACCREDITATION_EXPIRED = "accreditation_expired"       # refusal / payout-gate reason name


@dataclass(frozen=True, slots=True)
class Accreditation:
    number: str              # opaque, as on the certificate
    issued: date
    expires: date            # exclusive: the first day without accreditation
    authority: str


@dataclass(frozen=True, slots=True)
class AccreditationStatus:
    state: str               # valid | expiring | expired | not_yet_valid | missing
    days_left: int | None    # days until `expires`; None when missing
    text: str


def accreditation_status(acc: Accreditation | None, today: date, warn_days: int = WARN_DAYS) -> AccreditationStatus:
    if acc is None:
        return AccreditationStatus(MISSING, None, "no pool accreditation configured ([accreditation] number)")
    left = (acc.expires - today).days
    name = f"pool accreditation {acc.number} ({acc.authority})"
    if left <= 0:
        return AccreditationStatus(EXPIRED, left, f"{name} expired on {acc.expires.isoformat()}")
    if today < acc.issued:
        return AccreditationStatus(NOT_YET_VALID, left, f"{name} is valid from {acc.issued.isoformat()}")
    if left <= warn_days:
        return AccreditationStatus(EXPIRING, left, f"{name} expires on {acc.expires.isoformat()}, in {left} day(s)")
    return AccreditationStatus(VALID, left, f"{name} is valid until {acc.expires.isoformat()}")


def accreditation_from_settings(settings: Any) -> Accreditation | None:
    """From `[accreditation]`: number, issued, expires (YYYY-MM-DD), authority; None when the
    number is empty (the demo). Raises ValueError naming the key."""
    number = str(setting(settings, "number", "") or "") if settings is not None else ""
    if not number:
        return None
    dates = {}
    for key in ("issued", "expires"):
        try:
            dates[key] = date.fromisoformat(str(setting(settings, key, "")))
        except ValueError:
            raise ValueError(f"accreditation.{key}: expected YYYY-MM-DD") from None
    if dates["expires"] <= dates["issued"]:
        raise ValueError("accreditation.expires must be after accreditation.issued")
    authority = str(setting(settings, "authority", "") or "")
    if not authority:
        raise ValueError("accreditation.authority: name the issuing authority")
    return Accreditation(number, dates["issued"], dates["expires"], authority)


class AccreditationGuard:
    def __init__(self, accreditation: Accreditation | None, *, production: bool, clock: Clock = utc_now,
                 warn_days: int = WARN_DAYS, audit: Callable[[str, dict[str, Any]], None] | None = None,
                 check_interval_s: float = 3600.0) -> None:
        self.accreditation = accreditation
        self.production = production
        self.clock = clock
        self.warn_days = warn_days
        self.audit = audit
        self.check_interval_s = check_interval_s
        self.status = accreditation_status(accreditation, kz_today(clock()), warn_days)
        self._reported: tuple[str, date] | None = None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> AccreditationStatus:
        """Judge today; log once per state per KZ day; audit each change of state."""
        today = kz_today(self.clock())
        before = self.status.state if self._reported else None
        self.status = accreditation_status(self.accreditation, today, self.warn_days)
        st = self.status
        if self._reported != (st.state, today):
            self._reported = (st.state, today)
            level = {VALID: logging.INFO, EXPIRING: logging.WARNING}.get(st.state, logging.ERROR)
            if st.state == MISSING and not self.production:
                level = logging.INFO
            log.log(level, "event=accreditation state=%s days_left=%s enforced=%s text=%r", st.state,
                    st.days_left, self.production, st.text)
        if st.state != before and self.audit is not None:
            acc = self.accreditation
            self.audit(audit_events.ACCREDITATION, audit_events.change(
                st.state, acc.number if acc else "-", authority=acc.authority if acc else None,
                issued=acc.issued.isoformat() if acc else None, expires=acc.expires.isoformat() if acc else None,
                days_left=st.days_left, enforced=self.production))
        return st

    def blocked_text(self) -> str | None:
        """`accreditation_expired: <text>` when enforced and not valid, else None."""
        if self.production and self.status.state in (EXPIRED, MISSING, NOT_YET_VALID):
            return f"{ACCREDITATION_EXPIRED}: {self.status.text}"
        return None

    def accepting_new_miners(self) -> bool:
        return self.blocked_text() is None

    async def start(self) -> None:
        self.check()
        self._task = asyncio.create_task(self._run(), name="accreditation")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            self.check()

    async def stop(self) -> None:
        await stop_background_task(self._task)
        self._task = None
