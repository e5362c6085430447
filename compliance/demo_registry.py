"""The embedded demo's registry: one data centre covering loopback and the login `demo` with a valid
licence, so `kzpool run` with no config gives work to a CPU miner on the same machine and to no one
else. Seeded through the same CSV import (and checks) an operator uses, into an empty registry only:
a registry holding anything is never touched.

The IIN/BINs are the published BIN examples from KZ-REGULATION.md, not real miners' numbers.
"""
from __future__ import annotations

import logging

from .registry import LicenceRegistry, RegistryError
from .standing import kz_today

log = logging.getLogger("kzpool.compliance.demo")

DEMO_DATACENTRE = "demo-dc"
DEMO_LOGIN = "demo"
DEMO_LICENCE_NO = "DEMO-0001"
DEMO_OWNER_BIN = "940140000385"
DEMO_MINER_BIN = "950341000052"
# The regtest address the demo coinbase pays (pool.config.CoinbaseConfig's default).
DEMO_PAYOUT_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
DEMO_NETWORKS = "127.0.0.0/8 ::1/128"


def demo_datacentres_csv() -> str:
    return ("id,name,region,address,owner_iin_bin,cidrs\n"
            f'{DEMO_DATACENTRE},Demo data centre (this machine),Almaty,"loopback only, not a real data centre",'
            f"{DEMO_OWNER_BIN},{DEMO_NETWORKS}\n")


def demo_licences_csv(issued: str) -> str:
    return ("login,iin_bin,name,licence_no,subtype,issued,expires,status,suspended_until,datacentre,"
            "payout_address\n"
            f"{DEMO_LOGIN},{DEMO_MINER_BIN},Demo Miner LLP,{DEMO_LICENCE_NO},I,{issued},,active,,"
            f"{DEMO_DATACENTRE},{DEMO_PAYOUT_ADDRESS}\n")


async def seed_demo_registry(registry: LicenceRegistry) -> bool:
    """Seeds the demo registry if the registry is empty; True if it did. The licence is issued
    today (KZ time), so a fresh demo database is valid for 3 years."""
    if not await registry.is_empty():
        return False
    issued = kz_today(registry.clock()).isoformat()
    report = await registry.import_datacentres(demo_datacentres_csv())
    if report.ok:
        report = await registry.import_licences(demo_licences_csv(issued))
    if not report.ok:
        if not await registry.is_empty():
            return False      # another process is seeding it at the same moment
        raise RegistryError("demo registry: " + "; ".join(report.lines()))
    log.info("event=demo_registry_seeded login=%s datacentre=%s networks=%s", DEMO_LOGIN, DEMO_DATACENTRE,
             DEMO_NETWORKS.replace(" ", ","))
    return True
