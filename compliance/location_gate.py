"""The payout gate of location attestation and accreditation: `await payouts_blocked()` returns why
payouts must wait, or None.

Payouts wait while
- the pool's accreditation is expired (or missing) and that is enforced (production mode); or
- in location.mode = "enforce", a node that produced shares in the payout window currently stands
  failed: its latest stored verdict (table location_attestations, from any process or machine)
  is "fail".
"Currently" and not "at any time in the window": a failed node in enforce mode hands out no work,
and a gate that looked back over the window would keep a window that only moves on payout
blocked for good. Which nodes produced shares comes from node_share_minutes (the attestor counts
them per minute). "unknown" never blocks: it means the evidence could not be read, and enforce mode
refuses to start without every source configured.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select

from pool.db import Database

from .accreditation import AccreditationGuard
from .attestation_evidence import FAIL
from .curtailment_orders import from_micros, kz_text
from .power_models import LocationAttestation, NodeShareMinute
from .standing import Clock, utc_now
from .work_gate import NODE_LOCATION_FAILED

log = logging.getLogger("kzpool.compliance.location_gate")


class LocationPayoutGate:
    def __init__(self, db: Database, *, mode: str, window_s: float = 7 * 86400.0,
                 accreditation: AccreditationGuard | None = None, clock: Clock = utc_now) -> None:
        self.db = db
        self.mode = mode
        self.window_s = window_s
        self.accreditation = accreditation
        self.clock = clock

    async def payouts_blocked(self, window_start: datetime | None = None,
                              window_end: datetime | None = None) -> str | None:
        """The payouts engine's gate protocol. Without a window: the last `window_s` seconds."""
        if self.accreditation is not None:
            text = self.accreditation.blocked_text()
            if text:
                return text
        if self.mode != "enforce":
            return None
        end = window_end or self.clock()
        start = window_start or end - timedelta(seconds=self.window_s)
        failed = await self.failed_active_nodes(start, end)
        if not failed:
            return None
        node, checked, summary = failed[0]
        more = f" (and {len(failed) - 1} more node(s))" if len(failed) > 1 else ""
        text = (f"{NODE_LOCATION_FAILED}: node {node} produced shares between {kz_text(start)} and {kz_text(end)} "
                f"and failed its location check at {kz_text(checked)}: {summary}{more}")
        log.warning("event=payouts_blocked reason=%s node=%s", NODE_LOCATION_FAILED, node)
        return text

    async def failed_active_nodes(self, start: datetime, end: datetime) -> list[tuple[str, datetime, str]]:
        """(node, when it failed, evidence summary) of each node with shares in [start, end) whose
        latest verdict is fail."""
        start_s, end_s = int(start.timestamp()) // 60 * 60, int(end.timestamp())
        async with self.db.engine.connect() as conn:
            nodes = (await conn.execute(select(NodeShareMinute.node_id).where(
                NodeShareMinute.minute_s >= start_s, NodeShareMinute.minute_s <= end_s, NodeShareMinute.shares > 0)
                .distinct())).scalars().all()
            if not nodes:
                return []
            latest = (select(LocationAttestation.node_id, func.max(LocationAttestation.checked_us).label("at"))
                      .where(LocationAttestation.node_id.in_(nodes)).group_by(LocationAttestation.node_id).subquery())
            rows = await conn.execute(select(LocationAttestation.node_id, LocationAttestation.checked_us,
                                             LocationAttestation.verdict, LocationAttestation.evidence)
                                      .join(latest, (latest.c.node_id == LocationAttestation.node_id)
                                            & (latest.c.at == LocationAttestation.checked_us))
                                      .order_by(LocationAttestation.node_id))
            out = []
            for node, checked_us, verdict, evidence in rows:
                if verdict == FAIL:
                    out.append((node, from_micros(checked_us), _failed_summary(evidence)))
        return out


def _failed_summary(evidence_json: str) -> str:
    try:
        items = json.loads(evidence_json)
    except ValueError:
        return "evidence unreadable"
    failed = [f"{e.get('kind')} {e.get('subject')} {e.get('found') or e.get('detail')}"
              for e in items if isinstance(e, dict) and e.get("result") == FAIL]
    return "; ".join(failed) or "failed"


async def latest_verdicts(db: Database) -> dict[str, tuple[datetime, str]]:
    """node -> (checked at, verdict) of every node's latest check, for status pages and reports."""
    async with db.engine.connect() as conn:
        latest = (select(LocationAttestation.node_id, func.max(LocationAttestation.checked_us).label("at"))
                  .group_by(LocationAttestation.node_id).subquery())
        rows = await conn.execute(select(LocationAttestation.node_id, LocationAttestation.checked_us,
                                         LocationAttestation.verdict)
                                  .join(latest, (latest.c.node_id == LocationAttestation.node_id)
                                        & (latest.c.at == LocationAttestation.checked_us)))
        return {node: (from_micros(at), verdict) for node, at, verdict in rows}

