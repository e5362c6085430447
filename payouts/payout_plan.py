"""What a payout run pays: one item per miner, split between its wallet and, when registered, its
deposit address at a licensed exchange; then the transaction's outputs.

The exchange share (KZ rules on selling mined coins through licensed exchanges; the list of
eligible exchanges and the minimum share per year are configuration): a miner with a registered
deposit at an eligible exchange sends `max(its chosen share, the year's minimum)` there, rounded
up to the satoshi so the share is never below what was asked. A part that would be below the dust
limit joins the exchange part (the minimum share is honoured, no unspendable output is made). A
deposit at an exchange that is not (or no longer) eligible is ignored and noted. Commission is
split between the two parts by the same largest-remainder rule as credits.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from .schemes import BPS, largest_remainder


@dataclass(frozen=True, slots=True)
class Deposit:
    exchange_id: str
    address: str
    share_bps: int


@dataclass(frozen=True, slots=True)
class PlannedItem:
    login: str
    licence_no: str
    licence_issued: date
    amount_sats: int
    commission_sats: int
    wallet_address: str
    wallet_sats: int
    exchange_id: str = ""
    exchange_address: str = ""
    exchange_sats: int = 0
    exchange_share_bps: int = 0
    note: str = ""

    def parts(self) -> list[tuple[str, str, int, int]]:
        """(destination kind, address, sats, commission) of each non-empty part."""
        commission = largest_remainder(self.commission_sats, {"wallet": self.wallet_sats,
                                                              "exchange": self.exchange_sats}) \
            if self.amount_sats else {}
        out = []
        if self.wallet_sats:
            out.append(("wallet", self.wallet_address, self.wallet_sats, commission.get("wallet", 0)))
        if self.exchange_sats:
            out.append((f"exchange:{self.exchange_id}", self.exchange_address, self.exchange_sats,
                        commission.get("exchange", 0)))
        return out


def plan_item(login: str, licence_no: str, licence_issued: date, amount: int, commission: int,
              wallet_address: str, deposit: Deposit | None, eligible: Iterable[str], min_share_bps: int,
              dust_sats: int) -> PlannedItem:
    base: dict[str, Any] = dict(login=login, licence_no=licence_no, licence_issued=licence_issued, amount_sats=amount,
                commission_sats=commission, wallet_address=wallet_address)
    if deposit is None:
        return PlannedItem(**base, wallet_sats=amount)
    if deposit.exchange_id not in set(eligible):
        return PlannedItem(**base, wallet_sats=amount, note=f"exchange {deposit.exchange_id} not eligible")
    bps = min(BPS, max(deposit.share_bps, min_share_bps))
    to_exchange = -(-amount * bps // BPS)
    if 0 < to_exchange < dust_sats or 0 < amount - to_exchange < dust_sats:
        to_exchange = amount
    return PlannedItem(**base, wallet_sats=amount - to_exchange, exchange_id=deposit.exchange_id,
                       exchange_address=deposit.address, exchange_sats=to_exchange, exchange_share_bps=bps)


def outputs_of(items: Iterable[PlannedItem]) -> dict[str, int]:
    """Address -> sats for the transaction. Two parts to one address become one output: Core
    refuses a duplicated address in sendmany."""
    outputs: dict[str, int] = {}
    for item in items:
        for _, address, sats, _ in item.parts():
            outputs[address] = outputs.get(address, 0) + sats
    return dict(sorted(outputs.items()))
