"""Jobs and session drivers shared by the Stratum tests (no sockets here)."""
from __future__ import annotations

import json
from typing import Any

from stratum.extranonce import Extranonce1Allocator
from stratum.interfaces import Account, Peer
from stratum.jobbook import JobBook
from stratum.jobs import Job, prevhash_from_stratum_hex
from stratum.session import AuthorizeRequest, Send, Session, SessionConfig
from stratum.submit import SubmitCheck
from stratum.vardiff import VardiffConfig

from bitcoin_vectors import VECTORS

TESTNET = VECTORS["stratum_worked_example_testnet3_25096"]
BLOCK_100K = VECTORS["stratum_shaped_block_100000"]


def job_from_notify(params: list[Any], network_target: int, clean: bool | None = None) -> Job:
    job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, clean_jobs = params
    return Job(job_id=job_id, prevhash=prevhash_from_stratum_hex(prevhash), coinb1=bytes.fromhex(coinb1),
               coinb2=bytes.fromhex(coinb2), merkle_branch=tuple(bytes.fromhex(b) for b in branch),
               version=int(version, 16), nbits=int(nbits, 16), ntime=int(ntime, 16),
               clean_jobs=clean_jobs if clean is None else clean, network_target=network_target)


def target_from_nbits(nbits: int) -> int:
    return (nbits & 0x7FFFFF) * 256 ** ((nbits >> 24) - 3)


def make_testnet_job(clean: bool = True) -> Job:
    params = TESTNET["notify_params"]
    return job_from_notify(params, target_from_nbits(int(params[6], 16)), clean)


def lines(events: list[Any]) -> list[dict[str, Any]]:
    out = []
    for ev in events:
        if isinstance(ev, Send):
            out.extend(json.loads(line) for line in ev.data.decode().splitlines())
    return out


def req(msg_id: Any, method: str, params: list[Any]) -> bytes:
    return json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n"


class SessionDriver:
    """Drives one sans-IO session through the handshake, playing the server's part."""

    def __init__(self, cfg: SessionConfig | None = None, jobs: JobBook | None = None,
                 allocator: Extranonce1Allocator | None = None, host: str = "127.0.0.1") -> None:
        self.cfg = cfg or SessionConfig(extranonce2_size=4, start_difficulty=1.0,
                                        vardiff=VardiffConfig(min_difficulty=1e-8))
        self.jobs = jobs if jobs is not None else JobBook()
        self.allocator = allocator if allocator is not None else Extranonce1Allocator(4)
        self.now = 1000.0
        self.session = Session(self.cfg, self.jobs, self.allocator, Peer(host, 40000), self.now)

    def send(self, data: bytes) -> list[Any]:
        events = self.session.receive_data(data, self.now)
        out = list(events)
        for ev in events:
            if isinstance(ev, AuthorizeRequest):
                login = ev.worker.split(".")[0]
                out.extend(self.session.finish_authorize(ev, Account(login, ev.worker), self.now))
                out.extend(self.session.receive_pending(self.now))
        return out

    def handshake(self, resume: str | None = None, configure: bool = True) -> list[Any]:
        events: list[Any] = []
        if configure:
            events += self.send(req(1, "mining.configure", [["version-rolling"],
                                                            {"version-rolling.mask": "1fffe000",
                                                             "version-rolling.min-bit-count": 2}]))
        params = ["test/1.0"] + ([resume] if resume else [])
        events += self.send(req(2, "mining.subscribe", params))
        events += self.send(req(3, "mining.authorize", ["demo.rig1", "x"]))
        return events

    def submit(self, msg_id: int, params: list[str]) -> list[Any]:
        return self.send(req(msg_id, "mining.submit", params))

    @staticmethod
    def checks(events: list[Any]) -> list[SubmitCheck]:
        return [e for e in events if isinstance(e, SubmitCheck)]
