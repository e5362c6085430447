"""One place that says whether a login may get work now, from the in-memory answers of the
curtailment enforcer, the accreditation guard and the location attestor; and an Authorizer
wrapper that refuses new authorizations while it says no.

A gate is `login -> "<reason>: <text>" | None`. `WorkGate.refusal_text(login)` asks each in turn
(all are dict lookups); the pool uses it for new authorizations (`GatedAuthorizer`), for the job
broadcast and at each submit (see the wiring notes in docs/architecture.md).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Awaitable

from stratum.interfaces import Account, Authorizer, Peer, Refusal

from . import audit_events
from .backoff import RefusalBackoff

log = logging.getLogger("kzpool.compliance.work_gate")

Gate = Callable[[str], str | None]
NODE_LOCATION_FAILED = "location_attestation_failed"


def node_gate(node_may_work: Callable[[], bool], text: Callable[[], str]) -> Gate:
    """A gate for the whole node (location attestation in enforce mode)."""
    return lambda login: None if node_may_work() else text()


class WorkGate:
    def __init__(self, gates: Sequence[Gate]) -> None:
        self.gates = list(gates)

    def refusal_text(self, login: str) -> str | None:
        for gate in self.gates:
            text = gate(login)
            if text:
                return text
        return None

    def work_allowed(self, login: str) -> bool:
        return self.refusal_text(login) is None


class GatedAuthorizer:
    """Asks the gates before the inner authorizer (no registry read for a login that may not mine
    now: a curtailed data centre's miners retry in a loop). A refusal is error 24 named by the
    gate's reason, recorded like any other authorization, and answered later and later per
    address (RefusalBackoff) so retrying miners do not flood the audit log."""

    def __init__(self, inner: Authorizer, gate: WorkGate, *,
                 audit: Callable[[str, dict[str, Any]], None] | None = None,
                 backoff: RefusalBackoff | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.inner = inner
        self.gate = gate
        self.audit = audit
        self.backoff = backoff if backoff is not None else RefusalBackoff()
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        # is_still_valid, mark_invalid ... of the registry authorizer stay reachable through the wrapper.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
        text = self.gate.refusal_text(worker.partition(".")[0])
        if text is None:
            return await self.inner.authorize(worker, password, peer)
        result = Refusal(text.partition(":")[0], text)
        if self.audit is not None:
            self.audit(audit_events.AUTHORIZATION, audit_events.authorization(worker, peer, result))
        delay = self.backoff.refusal_delay(peer.host)
        if delay > 0:
            await self.sleep(delay)
        return result
