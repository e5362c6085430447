"""Acts on licences that stop being valid while their miners are connected.

Polls the registry every `interval_s` (at most 2 s, so a change recorded by any process, e.g. the
`kzpool licences revoke` CLI against the same database, reaches connected sessions well within
5 s). A poll reads only the licences whose change_seq grew (one indexed read, ~1 ms, when nothing
changed; a full read of 10 000 licences costs ~150 ms) and judges them at the current Kazakhstan
date; when that date changes, every licence is judged again, so an expiry or the end of a
suspension takes effect at KZ midnight without anyone recording it. A full read every
`full_scan_s` is the safety net.

Each licence that was valid at the previous poll (or is new since then) and is invalid now is
reported once: to the authorizer (`mark_invalid`, which the share path reads) and to
`on_invalid(login, reason_text)`, which the pool wires to StratumServer.show_message(...,
disconnect=True). The first poll sets the baseline without calling `on_invalid`: start the watcher
before the Stratum listener accepts connections.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import date
from typing import Callable

from .authorizer import RegistryAuthorizer
from .registry import LicenceRegistry
from .standing import Clock, LicenceDates, kz_today, standing, utc_now
from .background_task import stop_background_task

log = logging.getLogger("kzpool.compliance.watcher")

MAX_INTERVAL_S = 2.0


class LicenceWatcher:
    def __init__(self, registry: LicenceRegistry, on_invalid: Callable[[str, str], None], *,
                 clock: Clock = utc_now, interval_s: float = 1.0, full_scan_s: float = 300.0,
                 authorizer: RegistryAuthorizer | None = None) -> None:
        if not 0 < interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"licence watcher interval_s must be in (0, {MAX_INTERVAL_S}]")
        self.registry = registry
        self.on_invalid = on_invalid
        self.clock = clock
        self.interval_s = interval_s
        self.authorizer = authorizer
        self.full_scan_s = full_scan_s
        self._invalid: dict[str, str] | None = None     # login -> reason name; None before the first poll
        self._dates: dict[str, LicenceDates] = {}       # every licence, as of the last poll
        self._seq = 0                                   # the newest change_seq seen
        self._today: date | None = None
        self._last_full_scan = 0.0
        self._task: asyncio.Task[None] | None = None
        self.polls = 0
        self.failed_polls = 0

    async def start(self) -> None:
        """One poll now (so the baseline exists before miners connect), then poll in the background."""
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="licence-watcher")

    async def stop(self) -> None:
        await stop_background_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is away: keep the last known state and try again next interval.
                self.failed_polls += 1
                log.warning("event=licence_watch_failed error=%s failures=%d", type(exc).__name__,
                            self.failed_polls)

    async def poll_once(self) -> list[tuple[str, str]]:
        """Judge the licences that changed (all of them when the KZ date changed, and at every full
        scan); returns the (login, reason name) pairs newly invalid."""
        today = kz_today(self.clock())
        first = self._invalid is None
        full = first or time.monotonic() - self._last_full_scan >= self.full_scan_s
        changed, self._seq = await self.registry.licence_dates(0 if full else self._seq)
        if self.authorizer is not None:
            for lic in changed:       # its kept licence record is stale (dates, status or data centre)
                self.authorizer.forget(lic.login)
        if full:
            # Also the safety net for a row edited by hand in SQL, bypassing change_seq.
            self._dates = {lic.login: lic for lic in changed}
            self._last_full_scan = time.monotonic()
        else:
            self._dates.update((lic.login, lic) for lic in changed)
        judged = list(self._dates.values()) if full or today != self._today else changed
        self._today = today
        before = self._invalid or {}
        after = {} if len(judged) == len(self._dates) else dict(before)
        newly: list[tuple[str, str, str]] = []
        for lic in judged:
            st = standing(lic, today)
            if st.valid:
                after.pop(lic.login, None)
                continue
            after[lic.login] = st.reason
            if lic.login not in before:
                newly.append((lic.login, st.reason, st.text))
        self._sync_authorizer(before, after, judged)
        self._invalid = after
        self.polls += 1
        if first:
            log.info("event=licence_watch_start licences=%d invalid=%d", len(self._dates), len(after))
            return []
        for login, reason, text in newly:
            log.info("event=licence_invalid login=%s reason=%s", login, reason)
            try:
                self.on_invalid(login, f"{reason}: {text}")
            except Exception:
                log.exception("event=licence_invalid_callback_failed login=%s", login)
        return [(login, reason) for login, reason, _ in newly]

    def _sync_authorizer(self, before: dict[str, str], after: dict[str, str], judged: list[LicenceDates]) -> None:
        if self.authorizer is None:
            return
        for lic in judged:
            reason = after.get(lic.login)
            if reason is None and lic.login in before:
                self.authorizer.mark_valid(lic.login)
            elif reason is not None and before.get(lic.login) != reason:
                self.authorizer.mark_invalid(lic.login, reason)
