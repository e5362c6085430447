"""Filing distribution reports: an HTTPS POST to the configured endpoint (the Qoldau.kz API; its
URL, token and schema are configuration), with retries, and a record of what was accepted.

Only distributions not yet accepted are sent (`report_submitted_rows`), so re-running a period
after a partial failure never files a distribution twice. Each body carries an `Idempotency-Key`
(SHA-256 of the body) so a retry after a lost reply is recognisable to a server that honours it.
Retried: no answer, 408, 429 and 5xx, up to `attempts` times with exponential backoff (honouring
a Retry-After in seconds); any other 4xx is a rejection, recorded with the server's answer and not
retried. Every attempt's outcome is a `report_submissions` row and an audit record. The request
runs in a thread (urllib, the platform's TLS and certificate checks, plus `ca_file` if given).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert, select

from compliance import audit_events
from pool.db import Database

from .ledger import AuditSink
from .models import ReportSubmission, ReportSubmittedRow
from .reports import report_document

log = logging.getLogger("kzpool.payouts.report")

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
MAX_RESPONSE_CHARS = 2048


@dataclass(frozen=True, slots=True)
class SubmissionResult:
    status: str              # accepted | rejected | failed | nothing
    rows: int
    http_status: int = 0
    attempts: int = 0
    response: str = ""


class ReportSubmitter:
    def __init__(self, db: Database, endpoint: str, *, token: str = "", ca_file: str = "", timeout_s: float = 30.0,
                 attempts: int = 5, backoff_s: float = 2.0, audit: AuditSink | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if urlsplit(endpoint).scheme != "https":
            raise ValueError("payouts.report_endpoint must be an https:// URL")
        self.db, self.endpoint, self.token = db, endpoint, token
        self.ssl_context = ssl.create_default_context(cafile=ca_file or None)
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s
        self.audit, self.clock, self.sleep = audit, clock, sleep

    async def submit(self, rows: Sequence[dict[str, Any]], first: date, last: date, *, schema: str,
                     pool_bin: str = "", pool_name: str = "") -> SubmissionResult:
        async with self.db.engine.connect() as conn:
            done = set((await conn.execute(select(ReportSubmittedRow.distribution_id).where(
                ReportSubmittedRow.distribution_id.in_([r["distribution_id"] for r in rows])))).scalars())
        pending = [r for r in rows if r["distribution_id"] not in done]
        if not pending:
            return SubmissionResult("nothing", 0)
        body = json.dumps(report_document(pending, first, last, schema=schema, pool_bin=pool_bin,
                                          pool_name=pool_name), ensure_ascii=False, sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()
        status, http_status, answer, attempt = "failed", 0, "", 0
        for attempt in range(1, self.attempts + 1):
            http_status, answer, retry_after = await asyncio.to_thread(self._post, body, digest, schema)
            if 200 <= http_status < 300:
                status = "accepted"
                break
            if http_status and http_status not in RETRY_STATUSES:
                status = "rejected"
                break
            log.warning("event=report_submit_retry attempt=%d http_status=%d", attempt, http_status)
            if attempt < self.attempts:
                await self.sleep(retry_after if retry_after is not None else self.backoff_s * 2 ** (attempt - 1))
        await self._record(pending, first, last, schema, digest, status, http_status, attempt, answer)
        return SubmissionResult(status, len(pending), http_status, attempt, answer)

    def _post(self, body: bytes, digest: str, schema: str) -> tuple[int, str, float | None]:
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": digest,
                   "X-Report-Schema": schema, "User-Agent": "kzpool"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.ssl_context) as reply:
                return reply.status, reply.read(MAX_RESPONSE_CHARS).decode("utf-8", "replace"), None
        except urllib.error.HTTPError as exc:
            retry_after = exc.headers.get("Retry-After", "") if exc.headers else ""
            text = exc.read(MAX_RESPONSE_CHARS).decode("utf-8", "replace")
            return exc.code, text, float(retry_after) if retry_after.isdigit() else None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            return 0, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", None

    async def _record(self, pending: Sequence[dict[str, Any]], first: date, last: date, schema: str, digest: str,
                      status: str, http_status: int, attempts: int, answer: str) -> None:
        async with self.db.engine.begin() as conn:
            submission_id = (await conn.execute(insert(ReportSubmission).values(
                schema=schema, period_from=first, period_to=last, rows=len(pending), body_sha256=digest,
                endpoint=self.endpoint, status=status, http_status=http_status, attempts=attempts,
                response=answer[:MAX_RESPONSE_CHARS], submitted_us=round(self.clock() * 1e6))
                .returning(ReportSubmission.id))).scalar_one()
            if status == "accepted":
                await conn.execute(insert(ReportSubmittedRow), [
                    {"distribution_id": r["distribution_id"], "submission_id": submission_id} for r in pending])
        log.info("event=report_submitted status=%s rows=%d http_status=%d attempts=%d sha256=%s", status,
                 len(pending), http_status, attempts, digest)
        if self.audit is not None:
            self.audit(audit_events.REPORT_SUBMISSION, audit_events.change(
                status, f"{schema}:{first.isoformat()}..{last.isoformat()}", rows=len(pending),
                distribution_ids=[r["distribution_id"] for r in pending], body_sha256=digest,
                http_status=http_status, attempts=attempts, endpoint=self.endpoint))
