"""What the pool records in the audit log: the kinds, their payloads, and an Authorizer wrapper.

Each builder returns the payload dict for `AuditLog.record(kind, payload)`; keeping the shapes
here gives the auditor one list (docs/auditor-guide.md, "What is recorded") and the verifier the
fields it reads (block_found's `hash`, `height` and `script_sig` for the coinbase anchors).
Payloads never hold passwords, keys or raw IIN/BIN: a miner is named by login and licence number
(the registry's IIN index when a person must be identified), so an export can be handed over
without exposing personal data at rest.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stratum.interfaces import Account, Authorizer, Peer, Refusal

if TYPE_CHECKING:
    from pool.template import SubmitOutcome

    from .audit_log import AuditLog

POOL_START = "pool_start"
POOL_STOP = "pool_stop"
AUTHORIZATION = "authorization"
LICENCE_CHANGE = "licence_change"          # licence imported, added, suspended, revoked, expired
DATACENTRE_CHANGE = "datacentre_change"    # data centre or its IP ranges imported or changed
BLOCK_FOUND = "block_found"
BLOCK_STATUS = "block_status"              # a found block confirmed (matured) or orphaned
PAYOUT = "payout"                          # payout run prepared / sent / cancelled / blocked, freezes
LEDGER = "ledger"                          # one ledger posting (payouts/ledger.py), after its commit
REPORT_SUBMISSION = "report_submission"    # a distribution report filed to the revenue bodies' endpoint
LOCATION_CHECK = "location_check"
CURTAILMENT = "curtailment"
ACCREDITATION = "accreditation"              # the pool's accreditation changed state (valid, expiring, expired)
ADMIN_COMMAND = "admin_command"
MAX_WORKER_NAME = 256

# Credentials inside URLs (postgresql://user:secret@host/db) survive config.redacted(), which
# blanks by key name only.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


def scrub_url_passwords(value: Any) -> Any:
    """`value` with every `scheme://user:password@` turned into `scheme://user:***@`."""
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", value)
    if isinstance(value, Mapping):
        return {key: scrub_url_passwords(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_url_passwords(item) for item in value]
    return value


def pool_start(redacted_config: Mapping[str, Any], *, version: str, key_id: str) -> dict[str, Any]:
    """`redacted_config` is pool.config.redacted(cfg): the effective config, secrets blanked."""
    return {"version": version, "audit_key_id": key_id,
            "config": scrub_url_passwords(redacted_config)}


def pool_stop(reason: str) -> dict[str, Any]:
    return {"reason": reason}


def authorization(worker: str, peer: Peer, result: Account | Refusal) -> dict[str, Any]:
    # A refused name is whatever the peer sent: cut it to the workers column's width.
    worker = worker[:MAX_WORKER_NAME]
    if isinstance(result, Account):
        decision, reason, login = "accepted", None, result.login
    else:
        decision, reason, login = "refused", result.reason, worker.partition(".")[0]
    return {"decision": decision, "reason": reason, "login": login, "worker": worker,
            "source": f"{peer.host}:{peer.port}"}


def block_found(height: int, block_hash: str, worker: str, script_sig: bytes,
                outcomes: Iterable[SubmitOutcome]) -> dict[str, Any]:
    """`script_sig` is the coinbase scriptSig of the block (it carries the audit anchor); see
    `script_sig_of_block`."""
    return {"height": height, "hash": block_hash, "worker": worker, "script_sig": script_sig.hex(),
            "submissions": [{"node": o.node, "result": o.result, "error": o.error}
                            for o in outcomes]}


def script_sig_of_block(block: bytes) -> bytes:
    from pool.txparse import Block
    return Block.deserialize(block).transactions[0].inputs[0].script_sig


def block_status(height: int, block_hash: str, status: str, **details: Any) -> dict[str, Any]:
    return {"height": height, "hash": block_hash, "status": status, **details}


def ledger_posting(ref: str, kind: str, entries: Iterable[tuple[str, int, int]],
                   memo: Mapping[str, Any]) -> dict[str, Any]:
    """A committed ledger posting: its idempotency ref, kind, every entry as [account, amount_sats,
    commission_sats] (accounts name miners by login) and the facts it rested on."""
    return {"ref": ref, "kind": kind, "entries": [list(e) for e in entries], "memo": dict(memo)}


def payout(action: str, run_id: str, **details: Any) -> dict[str, Any]:
    """A payout decision: `action` is run_blocked, run_prepared, run_sent, run_cancelled,
    run_failed, psbt_written, frozen or unfrozen; `run_id` the payout run (or "-" for a run that
    never got one); details name miners by login and licence number, amounts in satoshis."""
    return change(action, run_id, **details)


def admin_command(command: str, arguments: Mapping[str, Any], operator: str) -> dict[str, Any]:
    """An operator's command (CLI or API); `arguments` must already be free of secrets."""
    return {"command": command, "arguments": scrub_url_passwords(arguments), "operator": operator}


def change(action: str, subject: str, **details: Any) -> dict[str, Any]:
    """The payload of licence, data-centre, payout, location and curtailment records: what
    happened (`action`), to what (`subject`: a licence number, a data centre id, a payout id),
    and the facts the decision rested on."""
    return {"action": action, "subject": subject, **details}


def location_check(node_id: str, datacentre_id: str, verdict: str, mode: str,
                   evidence: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """One location attestation of a pool node (compliance/attestation.py): the verdict and each
    piece of evidence (kind, subject, result, found, detail); addresses are the pool's own."""
    return change(verdict, node_id, datacentre=datacentre_id, mode=mode, evidence=list(evidence))


def curtailment(action: str, cause: str, scope: str, target: str, *, node_id: str, reason: str,
                **details: Any) -> dict[str, Any]:
    """A start ("block") or end ("release") of a stop on grid power for a scope (a data centre, a
    login, or "default"): `cause` is order | schedule | quota (compliance/curtailment.py)."""
    return change(action, f"{scope}:{target}", cause=cause, node=node_id, reason=reason, **details)


class AuditedAuthorizer:
    """An Authorizer that records every decision, accepted or refused, then returns it.
    The password the miner sent is never recorded."""

    def __init__(self, inner: Authorizer, audit: AuditLog) -> None:
        self.inner = inner
        self.audit = audit

    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
        result = await self.inner.authorize(worker, password, peer)
        self.audit.record(AUTHORIZATION, authorization(worker, peer, result))
        return result
