"""The pool's accreditation: states by Kazakhstan date, the 30-day warning, production refusing new
miners and blocking payouts once expired, demo mode enforcing nothing."""
from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest

from compliance.accreditation import (EXPIRED, EXPIRING, MISSING, NOT_YET_VALID, VALID, Accreditation,
                                      AccreditationGuard, accreditation_from_settings, accreditation_status)
from compliance.location_gate import LocationPayoutGate
from compliance.work_gate import GatedAuthorizer, WorkGate
from pool.db import Database
from registry_fixtures import SettableClock
from stratum.interfaces import Account, Peer, Refusal

ACC = Accreditation("AP-0042", date(2024, 3, 1), date(2027, 3, 1), "Ministry of Digital Development")


@pytest.mark.parametrize("today, state, days_left", [
    (date(2024, 2, 29), NOT_YET_VALID, 1096),
    (date(2027, 1, 29), VALID, 31),
    (date(2027, 1, 30), EXPIRING, 30),
    (date(2027, 2, 28), EXPIRING, 1),
    (date(2027, 3, 1), EXPIRED, 0),          # `expires` is the first day without accreditation
])
def test_states_by_date(today: date, state: str, days_left: int) -> None:
    status = accreditation_status(ACC, today)
    assert (status.state, status.days_left) == (state, days_left)
    assert "AP-0042" in status.text


def test_from_settings() -> None:
    assert accreditation_from_settings({"number": ""}) is None and accreditation_from_settings(None) is None
    assert accreditation_from_settings({"number": "AP-0042", "issued": "2024-03-01", "expires": "2027-03-01",
                                        "authority": "Ministry of Digital Development"}) == ACC
    with pytest.raises(ValueError, match="accreditation.expires"):
        accreditation_from_settings({"number": "A", "issued": "2024-03-01", "expires": "1 March", "authority": "M"})
    with pytest.raises(ValueError, match="accreditation.authority"):
        accreditation_from_settings({"number": "A", "issued": "2024-03-01", "expires": "2027-03-01"})


class Inner:
    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
        return Account(worker.partition(".")[0], worker)


async def test_production_stops_accepting_new_miners_and_payouts_once_expired(caplog: pytest.LogCaptureFixture) -> None:
    # 18:59 UTC on 28 February 2027 is 23:59 in Kazakhstan; a minute later the accreditation is over.
    clock = SettableClock(datetime(2027, 2, 28, 18, 59, tzinfo=UTC))
    records: list[dict] = []
    guard = AccreditationGuard(ACC, production=True, clock=clock, audit=lambda k, p: records.append(p))
    auth = GatedAuthorizer(Inner(), WorkGate([lambda login: guard.blocked_text()]))
    payouts = LocationPayoutGate(Database("sqlite+aiosqlite:///:memory:"), mode="warn", accreditation=guard)
    with caplog.at_level(logging.WARNING, logger="kzpool.compliance.accreditation"):
        assert guard.check().state == EXPIRING and guard.check().state == EXPIRING
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1   # once a day
    assert "days_left=1" in caplog.records[0].message
    assert isinstance(await auth.authorize("alice.rig1", "x", Peer("127.0.0.1", 1)), Account)
    assert await payouts.payouts_blocked() is None

    clock.advance(minutes=1)
    assert guard.check().state == EXPIRED and not guard.accepting_new_miners()
    refused = await auth.authorize("alice.rig1", "x", Peer("127.0.0.1", 1))
    assert isinstance(refused, Refusal) and refused.reason == "accreditation_expired"
    assert refused.message.startswith("accreditation_expired: pool accreditation AP-0042")
    assert (await payouts.payouts_blocked()).startswith("accreditation_expired: ")
    assert [(r["action"], r["subject"], r["enforced"]) for r in records] == [
        ("expiring", "AP-0042", True), ("expired", "AP-0042", True)]


def test_demo_mode_enforces_nothing_and_a_missing_accreditation_is_normal() -> None:
    expired = AccreditationGuard(ACC, production=False, clock=lambda: datetime(2028, 1, 1, tzinfo=UTC))
    assert expired.check().state == EXPIRED and expired.accepting_new_miners() and expired.blocked_text() is None
    demo = AccreditationGuard(None, production=False)
    assert demo.check().state == MISSING and demo.accepting_new_miners()
    production = AccreditationGuard(None, production=True)
    assert not production.accepting_new_miners()
    assert production.blocked_text() == ("accreditation_expired: no pool accreditation configured "
                                         "([accreditation] number)")
