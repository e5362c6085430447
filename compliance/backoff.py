"""Exponential backoff of authorization refusals, per source address.

A refusal is answered late, not refused harder: the first refusal from an address is immediate
(a typo gets quick feedback), each further one waits twice as long, up to `max_s`. Successful
authorizations are never delayed, so a licensed rig behind the same NAT as a misconfigured one
keeps connecting at once. Miners wait for the reply before they retry, so a guessing loop slows
to one try per `max_s`. An address is forgotten `forget_after_s` after its last refusal.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Callable

IPV6_GROUP_PREFIX = 64      # one IPv6 customer gets a /64: counting per address would be no limit


@dataclass(slots=True)
class _Entry:
    refusals: int
    last: float


def backoff_key(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        return str(mapped)
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/{IPV6_GROUP_PREFIX}", strict=False))
    return str(addr)


class RefusalBackoff:
    def __init__(self, base_s: float = 1.0, max_s: float = 60.0, forget_after_s: float = 600.0,
                 max_tracked: int = 65536, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= base_s <= max_s:
            raise ValueError("backoff: need 0 <= base_s <= max_s")
        self.base_s = base_s
        self.max_s = max_s
        self.forget_after_s = forget_after_s
        self.max_tracked = max_tracked
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def refusal_delay(self, host: str) -> float:
        """Records a refusal from `host`; returns how long to hold the refusal's reply."""
        now = self.clock()
        key = backoff_key(host)
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.last > self.forget_after_s:
            entry = _Entry(0, now)
        entry.refusals += 1
        entry.last = now
        self._entries[key] = entry          # re-inserted: the dict stays ordered oldest first
        self._trim(now)
        if entry.refusals == 1:
            return 0.0
        return float(min(self.max_s, self.base_s * 2.0 ** (entry.refusals - 2)))

    def _trim(self, now: float) -> None:
        if len(self._entries) <= self.max_tracked:
            return
        for key in list(self._entries):
            if len(self._entries) <= self.max_tracked // 2:
                break
            # Oldest first: forgotten ones go, and under a flood of addresses the stalest ones too.
            del self._entries[key]

    def tracked(self) -> int:
        return len(self._entries)
