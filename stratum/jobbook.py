"""The jobs miners may still submit against, shared by every session of one server.

A job stays valid until a job with `clean_jobs` arrives (a new prevhash); refresh jobs of the same
tip keep the older ones valid (DESIGN.md: "jobs of the current tip kept until the next block").
Duplicate detection lives here, not in a session, so that a share resubmitted over a new connection
that resumed the same extranonce1 is still caught.
"""
from __future__ import annotations

from collections import OrderedDict

from .jobs import Job

ShareKey = tuple[bytes, bytes, int, int, int]   # extranonce1, extranonce2, ntime, nonce, version


class JobBook:
    def __init__(self, max_jobs: int = 64) -> None:
        self.max_jobs = max_jobs     # bounds memory when a tip lasts long and refreshes pile up
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._seen: dict[str, set[ShareKey]] = {}
        self.current: Job | None = None

    def add(self, job: Job) -> list[str]:
        """Adds a job; returns the ids that are no longer valid."""
        dropped: list[str] = []
        if job.clean_jobs:
            dropped = list(self._jobs)
            self._jobs.clear()
            self._seen.clear()
        self._jobs[job.job_id] = job
        self._seen[job.job_id] = set()
        while len(self._jobs) > self.max_jobs:
            old_id, _ = self._jobs.popitem(last=False)
            self._seen.pop(old_id, None)
            dropped.append(old_id)
        self.current = job
        return dropped

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def first_sighting(self, job_id: str, key: ShareKey) -> bool:
        """True the first time a share key is seen for a job; records it."""
        seen = self._seen.get(job_id)
        if seen is None:
            return False
        if key in seen:
            return False
        seen.add(key)
        return True

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)
