"""The small interfaces the rest of the pool implements for Stratum (DESIGN.md "Boundaries").

Stratum depends on nothing else in the project; `pool/` and `compliance/` provide these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .jobs import Job, ShareResult, Submission


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Account:
    """An authorized worker: `login` is the account, `worker` the full name the miner sent."""
    login: str
    worker: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A named reason an authorization was refused (sent to the miner as error 24)."""
    reason: str        # machine name, e.g. "unknown_login", "licence_revoked"
    message: str       # human text for the miner


class Authorizer(Protocol):
    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal: ...


class ShareHasher(Protocol):
    """Hashes a batch of submissions of one job (pure Python reference or the C path)."""
    name: str

    def hash_batch(self, job: Job, subs: Sequence[Submission]) -> list[ShareResult]: ...


class ShareSink(Protocol):
    """Takes each share that met its target; returns only once the share is durable.

    The `true` reply goes to the miner after this returns (no acknowledged share is ever lost).
    Block candidates (`result.meets_network`) are submitted by the sink as well.
    """
    async def accept(self, account: Account, peer: Peer, extranonce1: bytes, job_id: str,
                     job: Job, sub: Submission, difficulty: float, result: ShareResult) -> None: ...
