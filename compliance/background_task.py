"""Stopping the periodic tasks of the compliance components (watcher, curtailment, energy, accreditation)."""
from __future__ import annotations

import asyncio


async def stop_background_task(task: asyncio.Task[None] | None) -> None:
    """Cancels `task` and waits until it has stopped; nothing to do for None."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
