"""Authorization against the licence registry: only licensed miners get work (Law No. 193-VII).

Implements stratum.interfaces.Authorizer. A worker `<login>.<rig>` is accepted when the login has a
licence that is valid today (Kazakhstan time) and, with `require_datacentre_ip`, the connection
comes from a registered IP range of the licence's data centre. Every refusal is error 24 with a
message starting with the reason's name. Every decision goes to the `audit` callback (kind
"authorization") with no personal data in it.

`is_still_valid(login)` is the share path's check: a dict lookup, kept current by the
LicenceWatcher through `mark_invalid` / `mark_valid`.

Licence records read from the registry are kept for `record_cache_s` (30 s), so a reconnect storm
(every miner after a pool restart) reads each login once, not once per rig; the watcher drops a
login's record as soon as its licence row changes (`forget`), and the marks above still apply to a
kept record. Data-centre ranges are re-read when a record ages out. Unknown logins are not kept.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any, Awaitable, Callable

from stratum.interfaces import Account, Peer, Refusal

from .backoff import RefusalBackoff
from .csv_import import NAME_PATTERN
from .iin import redact_iin_bins
from .registry import AuditSink, LicenceRecord, LicenceRegistry
from .standing import Clock, kz_today, standing, utc_now

log = logging.getLogger("kzpool.compliance.authorizer")

UNKNOWN_LOGIN = "unknown_login"
OUTSIDE_DATACENTRE = "address_outside_datacentre"
REGISTRY_UNAVAILABLE = "registry_unavailable"
MAX_KEPT_RECORDS = 200_000       # licence records kept between authorizations (far above any pool's logins)


def peer_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; judge them as the IPv4 address.
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped or addr


def refusal(reason: str, text: str) -> Refusal:
    return Refusal(reason, f"{reason}: {text}")


class RegistryAuthorizer:
    def __init__(self, registry: LicenceRegistry, require_datacentre_ip: bool, clock: Clock = utc_now,
                 audit: AuditSink | None = None, *, backoff: RefusalBackoff | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, record_cache_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.require_datacentre_ip = require_datacentre_ip
        self.clock = clock
        self.audit = audit
        self.backoff = backoff if backoff is not None else RefusalBackoff()
        self.sleep = sleep
        # login -> (reason, generation of the mark). A mark newer than an authorization's start
        # means the licence stopped being valid while its registry read was in flight.
        self._invalid: dict[str, tuple[str, int]] = {}
        self._generation = 0
        self.record_cache_s = record_cache_s
        self.monotonic = monotonic
        self._records: dict[str, tuple[LicenceRecord, float]] = {}   # login -> (record, read at)
        self._forgotten = 0          # bumped by forget(): a read in flight across it is not kept
        self.registry_reads = 0

    # ---- the watcher's side -----------------------------------------------------------------
    def mark_invalid(self, login: str, reason: str) -> None:
        self._generation += 1
        self._invalid[login] = (reason, self._generation)

    def mark_valid(self, login: str) -> None:
        self._invalid.pop(login, None)

    def forget(self, login: str) -> None:
        """The licence row of `login` changed: the next authorization reads it again."""
        self._forgotten += 1
        self._records.pop(login, None)

    def is_still_valid(self, login: str) -> bool:
        """False once the watcher saw this login's licence stop being valid (until it is valid again)."""
        return login not in self._invalid

    # ---- Authorizer ---------------------------------------------------------------------------
    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
        login = worker.partition(".")[0]
        started = self._generation
        if not NAME_PATTERN.fullmatch(login):
            return await self._refuse(worker, login, peer, None,
                                      refusal(UNKNOWN_LOGIN, "worker names are <login>.<worker>"))
        try:
            record = await self._lookup(login)
        except Exception as exc:    # the database is down: refuse now, the miner retries later
            log.warning("event=authorization_registry_error error=%s", type(exc).__name__)
            return await self._refuse(worker, login, peer, None, refusal(
                REGISTRY_UNAVAILABLE, "the licence registry is unavailable, try again later"), backoff=False)
        if record is None:
            return await self._refuse(worker, login, peer, None, refusal(
                UNKNOWN_LOGIN, f"login '{login}' is not in the licence registry"))
        verdict = self._judge(record, peer, started)
        if isinstance(verdict, Refusal):
            return await self._refuse(worker, login, peer, record, verdict)
        self._decided(worker, login, peer, record, "accepted", "licence_valid")
        return Account(login=login, worker=worker)

    async def _lookup(self, login: str) -> LicenceRecord | None:
        now = self.monotonic()
        kept = self._records.get(login)
        if kept is not None and now - kept[1] < self.record_cache_s:
            return kept[0]
        forgotten = self._forgotten
        self.registry_reads += 1
        record = await self.registry.lookup(login)
        if record is not None and self.record_cache_s > 0 and forgotten == self._forgotten:
            if len(self._records) >= MAX_KEPT_RECORDS:
                self._records.clear()
            self._records[login] = (record, now)
        return record

    def _judge(self, record: LicenceRecord, peer: Peer, started: int) -> Refusal | None:
        login = record.dates.login
        st = standing(record.dates, kz_today(self.clock()))
        if not st.valid:
            return refusal(st.reason, st.text)
        if self.require_datacentre_ip:
            addr = peer_address(peer.host)
            if addr is None or not any(addr in net for net in record.networks if net.version == addr.version):
                return refusal(OUTSIDE_DATACENTRE, f"login '{login}' mines only from the registered IP ranges "
                                                   f"of data centre '{record.datacentre_id}'")
        mark = self._invalid.get(login)
        if mark is not None:
            reason, generation = mark
            if generation > started:
                return refusal(reason, f"the licence of login '{login}' stopped being valid")
            self._invalid.pop(login, None)   # an older mark: the registry read after it says valid
        return None

    async def _refuse(self, worker: str, login: str, peer: Peer, record: LicenceRecord | None,
                      result: Refusal, backoff: bool = True) -> Refusal:
        self._decided(worker, login, peer, record, "refused", result.reason)
        delay = self.backoff.refusal_delay(peer.host) if backoff else 0.0
        if delay > 0:
            log.debug("event=authorization_backoff delay_s=%.1f", delay)
            await self.sleep(delay)
        return result

    def _decided(self, worker: str, login: str, peer: Peer, record: LicenceRecord | None,
                 decision: str, reason: str) -> None:
        if self.audit is None:
            return
        payload: dict[str, Any] = {
            "decision": decision, "reason": reason, "login": redact_iin_bins(login),
            "worker": redact_iin_bins(worker), "peer": peer.host,
            "licence_no": record.licence_no if record else None,
            "datacentre": record.datacentre_id if record else None,
            "require_datacentre_ip": self.require_datacentre_ip,
        }
        try:
            self.audit("authorization", payload)
        except Exception:
            log.exception("event=audit_callback_failed kind=authorization")
