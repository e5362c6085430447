"""Location attestation of one pool node: is this server in Kazakhstan?

`LocationAttestor` gathers the evidence (compliance/attestation_evidence.py) at start and every
`check_interval_s`, turns it into a verdict, stores it (table location_attestations), records it in
the audit log (kind location_check) and keeps the latest in memory for `node_may_work()`.

The verdict: "fail" if any piece of evidence fails, "pass" if every piece passes, otherwise
"unknown" (a database missing or unreadable, an address the database does not know). A node with no
public addresses configured cannot be attested at all: its verdict is "unknown" whatever the clock
says, which is what the embedded demo default gets.

location.mode = "enforce": a failed node hands out no work (`node_may_work()` is False, and
`on_withhold(text)` is called once when it turns so, for the pool to tell and drop its miners), and
the payout gate (compliance/location_gate.py) blocks payouts while a node that produced shares in
the payout window failed. Enforce mode needs every source configured, or it could never fail.
"warn": the same checks, logged and recorded, nothing withheld.

It also counts the shares this node accepts, per minute (table node_share_minutes), so the payout
gate can tell which nodes produced shares in a window.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite

from pool.db import Database
from pool.share_export import to_micros

from . import audit_events
from .attestation_evidence import (FAIL, PASS, UNKNOWN, CountryDatabase, Evidence, IpAddress, IpNetwork,
                                   clock_evidence, datacentre_evidence, delegation_evidence, host_utc_offset)
from .models import DatacentreNetwork
from .power_models import LocationAttestation, NodeShareMinute
from .standing import Clock, utc_now

log = logging.getLogger("kzpool.compliance.attestation")

AuditSink = Callable[[str, dict[str, Any]], None]
MODES = ("enforce", "warn")
KZ_OFFSET = timedelta(hours=5)


@dataclass(frozen=True, slots=True)
class Verdict:
    node_id: str
    datacentre_id: str
    checked_at: datetime          # UTC
    verdict: str                  # pass | fail | unknown
    mode: str
    evidence: tuple[Evidence, ...]

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL

    def summary(self) -> str:
        """The evidence that decided, e.g. `geoip 8.8.8.8 US; rir 8.8.8.8 not in any KZ delegation`."""
        decisive = [e for e in self.evidence if e.result == self.verdict] or list(self.evidence)
        return "; ".join(f"{e.kind} {e.subject} {e.found or e.detail}".rstrip() for e in decisive)


def combine(evidence: Sequence[Evidence], has_addresses: bool) -> str:
    if not has_addresses:
        return UNKNOWN
    results = {e.result for e in evidence}
    if FAIL in results:
        return FAIL
    return PASS if results == {PASS} else UNKNOWN


def parse_addresses(values: Sequence[str]) -> tuple[IpAddress, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"location.public_addresses: {value!r} is not an IP address") from None
    return tuple(out)


class LocationAttestor:
    def __init__(self, db: Database, *, node_id: str, datacentre_id: str = "",
                 public_addresses: Sequence[str] = (), mmdb_path: str = "", delegated_stats_path: str = "",
                 mode: str = "warn", check_interval_s: float = 3600.0, country: str = "KZ",
                 utc_offset: timedelta = KZ_OFFSET, clock: Clock = utc_now,
                 host_offset: Callable[[], timedelta] = host_utc_offset, audit: AuditSink | None = None,
                 on_withhold: Callable[[str], None] | None = None,
                 shares_accepted: Callable[[], int] | None = None, activity_interval_s: float = 60.0) -> None:
        if mode not in MODES:
            raise ValueError(f"location.mode = {mode!r}: expected one of {list(MODES)}")
        if not node_id:
            raise ValueError("location.node_id must name this node")
        if check_interval_s <= 0 or activity_interval_s <= 0:
            raise ValueError("location.check_interval_s and the activity interval must be > 0")
        self.addresses = parse_addresses(public_addresses)
        if mode == "enforce":
            missing = [key for key, value in (("location.mmdb_path", mmdb_path),
                                              ("location.delegated_stats_path", delegated_stats_path),
                                              ("location.public_addresses", self.addresses),
                                              ("location.datacentre", datacentre_id)) if not value]
            if missing:
                raise ValueError(f"location.mode = 'enforce' needs {', '.join(missing)}")
        self.db = db
        self.node_id = node_id
        self.datacentre_id = datacentre_id
        self.countries = CountryDatabase(mmdb_path)
        self.delegated_stats_path = delegated_stats_path
        self.mode = mode
        self.check_interval_s = check_interval_s
        self.country = country.upper()
        self.utc_offset = utc_offset
        self.clock = clock
        self.host_offset = host_offset
        self.audit = audit
        self.on_withhold = on_withhold
        self.shares_accepted = shares_accepted
        self.activity_interval_s = activity_interval_s
        self.latest: Verdict | None = None
        self._shares_seen = 0
        self._tasks: list[asyncio.Task[None]] = []

    # ---- what the pool asks ---------------------------------------------------------------------
    def node_may_work(self) -> bool:
        """False only in enforce mode after a failed check; cheap (read at every job and authorization)."""
        return not (self.mode == "enforce" and self.latest is not None and self.latest.failed)

    def withheld_text(self) -> str:
        v = self.latest
        return f"location_attestation_failed: node {self.node_id}: {v.summary() if v else ''}"

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """One check now (before the listener accepts miners), then checks and share counts in the background."""
        if self.shares_accepted is not None:
            self._shares_seen = self.shares_accepted()     # shares before this node attested are not its to count
        await self.check_once()
        self._tasks = [asyncio.create_task(self._every(self.check_interval_s, self.check_once), name="location-check")]
        if self.shares_accepted is not None:
            self._tasks.append(asyncio.create_task(self._every(self.activity_interval_s, self.flush_activity),
                                                   name="node-activity"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        try:
            await self.flush_activity()
        except Exception as exc:
            log.warning("event=node_activity_failed node=%s error=%s", self.node_id, type(exc).__name__)

    async def _every(self, interval_s: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=location_task_failed node=%s task=%s error=%s", self.node_id,
                            getattr(work, "__name__", "?"), type(exc).__name__)

    # ---- the check ----------------------------------------------------------------------------------
    async def check_once(self) -> Verdict:
        now = self.clock()
        public = [a for a in self.addresses if a.is_global]
        evidence: list[Evidence] = [Evidence("addresses", str(a), UNKNOWN, "", "not a public address")
                                    for a in self.addresses if not a.is_global]
        if not self.addresses:
            evidence.append(Evidence("addresses", "node", UNKNOWN, "", "no public addresses configured "
                                                                       "(location.public_addresses)"))
        # File reads and the delegated-stats parse (~200k lines) stay off the event loop.
        evidence += await asyncio.to_thread(self._file_evidence, public)
        evidence += datacentre_evidence(self.datacentre_id, await self._datacentre_networks(), self.addresses)
        evidence.append(clock_evidence(self.host_offset(), self.utc_offset))
        verdict = Verdict(self.node_id, self.datacentre_id, now, combine(evidence, bool(self.addresses)),
                          self.mode, tuple(evidence))
        await self._record(verdict)
        could_work = self.node_may_work()
        self.latest = verdict
        if could_work and not self.node_may_work():
            log.error("event=location_work_withheld node=%s %s", self.node_id, verdict.summary())
            if self.on_withhold is not None:
                self.on_withhold(self.withheld_text())
        elif not could_work and self.node_may_work():
            log.info("event=location_work_resumed node=%s verdict=%s", self.node_id, verdict.verdict)
        return verdict

    def _file_evidence(self, public: list[IpAddress]) -> list[Evidence]:
        return (self.countries.countries(public, self.country)
                + delegation_evidence(self.delegated_stats_path, public, self.country))

    async def _datacentre_networks(self) -> list[IpNetwork] | None:
        if not self.datacentre_id:
            return None
        try:
            async with self.db.engine.connect() as conn:
                cidrs = (await conn.execute(select(DatacentreNetwork.cidr).where(
                    DatacentreNetwork.datacentre_id == self.datacentre_id))).scalars().all()
        except Exception as exc:
            log.warning("event=location_registry_unavailable node=%s error=%s", self.node_id, type(exc).__name__)
            return None
        return [ipaddress.ip_network(c) for c in cidrs] or None

    async def _record(self, v: Verdict) -> None:
        level = logging.INFO if v.verdict == PASS else logging.WARNING
        log.log(level, "event=location_check node=%s datacentre=%s verdict=%s mode=%s evidence=%s", v.node_id,
                v.datacentre_id or "-", v.verdict, v.mode, json.dumps(v.summary()))
        evidence = [e.as_dict() for e in v.evidence]
        if self.audit is not None:
            self.audit(audit_events.LOCATION_CHECK, audit_events.location_check(
                v.node_id, v.datacentre_id, v.verdict, v.mode, evidence))
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(LocationAttestation).values(
                    node_id=v.node_id, datacentre_id=v.datacentre_id, checked_us=to_micros(v.checked_at),
                    verdict=v.verdict, mode=v.mode, evidence=json.dumps(evidence, sort_keys=True)))
        except Exception as exc:
            # The verdict still counts in this process; the audit log holds it.
            log.warning("event=location_store_failed node=%s error=%s", self.node_id, type(exc).__name__)

    # ---- shares per node ------------------------------------------------------------------------------
    async def flush_activity(self) -> None:
        if self.shares_accepted is None:
            return
        total = self.shares_accepted()
        delta, self._shares_seen = total - self._shares_seen, total
        if delta <= 0:
            return
        minute_s = int(self.clock().timestamp()) // 60 * 60
        dialect_insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        stmt = dialect_insert(NodeShareMinute).values(node_id=self.node_id, minute_s=minute_s, shares=delta)
        stmt = stmt.on_conflict_do_update(index_elements=["node_id", "minute_s"],
                                          set_={"shares": NodeShareMinute.shares + stmt.excluded.shares})
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(stmt)
        except Exception:
            self._shares_seen -= delta           # counted again at the next flush
            raise

