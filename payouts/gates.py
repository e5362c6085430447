"""Compliance gates of a payout run (Law No. 193-VII: only licensed miners, only an accredited
pool whose servers are in Kazakhstan).

- Pool-wide: any `PayoutGate` that names a reason stops the whole run before anything is frozen,
  reserved or sent: the location attestation blocking payouts, an expired accreditation
  (compliance/, issue 8, implements them). A gate that raises blocks too: a check that cannot be
  made is not a pass.
- Per miner: `LicenceGate.judge(login)` — a valid licence today (Kazakhstan time, the registry's
  one rule in compliance/standing.py) and a payout address valid on the pool's network; otherwise
  the miner's balance is frozen with the reason, and released by a later run once it is valid.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from compliance.registry import LicenceRegistry, RegistryError
from compliance.standing import Clock, kz_today, standing, utc_now
from pool.address import AddressError, address_to_script

log = logging.getLogger("kzpool.payouts.gates")

NO_LICENCE = "no_licence"
BAD_ADDRESS = "payout_address_invalid"


class PayoutGate(Protocol):
    async def payouts_blocked(self) -> str | None:
        """A reason the pool may not pay anyone now, or None."""
        ...


async def blocking_reason(gates: Sequence[PayoutGate]) -> str | None:
    for gate in gates:
        try:
            reason = await gate.payouts_blocked()
        except Exception as exc:
            reason = f"gate_failed: {type(gate).__name__}: {type(exc).__name__}: {exc}"
        if reason:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class MinerStanding:
    login: str
    payable: bool
    reason: str                  # compliance.standing reason name, NO_LICENCE or BAD_ADDRESS
    licence_no: str = ""
    licence_issued: date | None = None
    payout_address: str = ""


class LicenceGate:
    def __init__(self, registry: LicenceRegistry | None, network: str, clock: Clock = utc_now) -> None:
        self.registry, self.network, self.clock = registry, network, clock

    async def judge(self, login: str) -> MinerStanding:
        if self.registry is None:
            return MinerStanding(login, False, NO_LICENCE)
        try:
            view = await self.registry.show(login)
        except RegistryError:
            return MinerStanding(login, False, NO_LICENCE)
        verdict = standing(view.dates, kz_today(self.clock()))
        base: dict[str, Any] = dict(licence_no=view.licence_no, licence_issued=view.dates.issued, payout_address=view.payout_address)
        if not verdict.valid:
            return MinerStanding(login, False, verdict.reason, **base)
        try:
            address_to_script(view.payout_address, self.network)
        except AddressError:
            return MinerStanding(login, False, BAD_ADDRESS, **base)
        return MinerStanding(login, True, verdict.reason, **base)
