"""Authorization by a fixed list of logins and source networks, until the licence registry exists.

Worker names are `<login>.<worker>`. The embedded demo is the list ["demo"] from loopback only, so a
demo pool left listening on 0.0.0.0 gives no work to the outside world; a production config may name
its logins and the farms' networks explicitly with `auth.authorizer = "allowlist"`.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

from stratum.interfaces import Account, Peer, Refusal

DEMO_LOGIN = "demo"
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


def split_worker(worker: str) -> tuple[str, str]:
    login, _, rig = worker.partition(".")
    return login, rig


def peer_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; judge them as the IPv4 address.
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped or addr


class AllowlistAuthorizer:
    def __init__(self, logins: Iterable[str], networks: Iterable[str]) -> None:
        self.logins = frozenset(logins)
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    @classmethod
    def demo(cls) -> "AllowlistAuthorizer":
        return cls([DEMO_LOGIN], LOOPBACK_NETWORKS)

    async def authorize(self, worker: str, password: str, peer: Peer) -> Account | Refusal:
        login, _ = split_worker(worker)
        if login not in self.logins:
            hint = f"; this demo pool accepts '{DEMO_LOGIN}.<worker>'" if self.logins == {DEMO_LOGIN} else ""
            return Refusal("unknown_login", f"Unknown login{hint}")
        addr = peer_address(peer.host)
        if addr is None or not any(addr in net for net in self.networks if net.version == addr.version):
            return Refusal("address_not_allowed", "Connections for this login are not accepted from your address")
        return Account(login=login, worker=worker)
