"""The embedded default's authorizer: login `demo` from loopback, until the licence registry exists.

Worker names are `<login>.<worker>`; the demo accepts `demo` and `demo.<anything>` from 127.0.0.0/8
or ::1 only, so a demo pool left listening on 0.0.0.0 gives no work to the outside world.
"""
from __future__ import annotations

import ipaddress

from stratum.interfaces import Account, Peer, Refusal

DEMO_LOGIN = "demo"


def split_worker(worker: str) -> tuple[str, str]:
    login, _, rig = worker.partition(".")
    return login, rig


def is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    # A dual-stack listener reports IPv4 peers as ::ffff:127.0.0.1, which 3.11 does not call loopback.
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


class DemoAuthorizer:
    def __init__(self, login: str = DEMO_LOGIN) -> None:
        self.login = login

    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
        login, _ = split_worker(worker)
        if login != self.login:
            return Refusal("unknown_login", f"Unknown login; the demo pool accepts '{self.login}.<worker>'")
        if not is_loopback(peer.host):
            return Refusal("address_not_allowed", "The demo login is accepted from this machine only")
        return Account(login=login, worker=worker)
