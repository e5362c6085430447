"""The small interfaces the rest of the pool implements for Stratum (DESIGN.md "Boundaries").

Stratum depends on nothing else in the project; `pool/` and `compliance/` provide these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

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


class AcceptedShare(NamedTuple):
    """A share that met its target, as the server hands it to the sink (a tuple: one per share)."""
    account: Account
    peer: Peer
    job_id: str            # as the miner sent it (may be a re-issued id)
    job: Job
    sub: Submission
    difficulty: float      # the share target difficulty it was judged at
    result: ShareResult


class ShareSink(Protocol):
    """Takes the shares of one event-loop turn that met their targets; returns once they are durable.

    The `true` replies go to the miners after this returns (no acknowledged share is ever lost).
    Returns the indexes of shares it refused to store (each gets an error reply); raising means
    none of them is durable. Block candidates (`result.meets_network`) are submitted by the sink
    as well. One call per batch, not per share: a coroutine per share costs more than its storage.
    """
    async def accept_batch(self, shares: Sequence[AcceptedShare]) -> Sequence[int]: ...
