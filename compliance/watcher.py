"""Acts on licences that stop being valid while their miners are connected.

Polls the registry every `interval_s` (at most 2 s, so a change recorded by any process, e.g. the
`kzpool licences revoke` CLI against the same database, reaches connected sessions well within
5 s) and judges every licence at the current Kazakhstan date, so an expiry or the start of a
suspension takes effect at KZ midnight without anyone recording it.

Each licence that was valid at the previous poll (or is new since then) and is invalid now is
reported once: to the authorizer (`mark_invalid`, which the share path reads) and to
`on_invalid(login, reason_text)`, which the pool wires to StratumServer.show_message(...,
disconnect=True). The first poll sets the baseline without calling `on_invalid`: start the watcher
before the Stratum listener accepts connections.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .authorizer import RegistryAuthorizer
from .registry import LicenceRegistry
from .standing import Clock, kz_today, standing, utc_now

log = logging.getLogger("kzpool.compliance.watcher")

MAX_INTERVAL_S = 2.0


class LicenceWatcher:
    def __init__(self, registry: LicenceRegistry, on_invalid: Callable[[str, str], None], *,
                 clock: Clock = utc_now, interval_s: float = 1.0,
                 authorizer: RegistryAuthorizer | None = None) -> None:
        if not 0 < interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"licence watcher interval_s must be in (0, {MAX_INTERVAL_S}]")
        self.registry = registry
        self.on_invalid = on_invalid
        self.clock = clock
        self.interval_s = interval_s
        self.authorizer = authorizer
        self._invalid: dict[str, str] | None = None     # login -> reason name; None before the first poll
        self._task: asyncio.Task[None] | None = None
        self.polls = 0
        self.failed_polls = 0

    async def start(self) -> None:
        """One poll now (so the baseline exists before miners connect), then poll in the background."""
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="licence-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
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
        """Judge every licence now; returns the (login, reason name) pairs newly invalid."""
        licences = await self.registry.all_dates()
        today = kz_today(self.clock())
        now_invalid: dict[str, str] = {}
        texts: dict[str, str] = {}
        for lic in licences:
            st = standing(lic, today)
            if not st.valid:
                now_invalid[lic.login] = st.reason
                texts[lic.login] = st.text
        first = self._invalid is None
        before = self._invalid or {}
        newly = [(login, reason) for login, reason in now_invalid.items() if login not in before]
        self._sync_authorizer(before, now_invalid)
        self._invalid = now_invalid
        self.polls += 1
        if first:
            log.info("event=licence_watch_start licences=%d invalid=%d", len(licences), len(now_invalid))
            return []
        for login, reason in newly:
            log.info("event=licence_invalid login=%s reason=%s", login, reason)
            try:
                self.on_invalid(login, f"{reason}: {texts[login]}")
            except Exception:
                log.exception("event=licence_invalid_callback_failed login=%s", login)
        return newly

    def _sync_authorizer(self, before: dict[str, str], now_invalid: dict[str, str]) -> None:
        if self.authorizer is None:
            return
        for login, reason in now_invalid.items():
            if before.get(login) != reason:
                self.authorizer.mark_invalid(login, reason)
        for login in before.keys() - now_invalid.keys():
            self.authorizer.mark_valid(login)
