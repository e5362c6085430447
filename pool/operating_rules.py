"""The law's limits on when and where this pool may hand out work (Law No. 193-VII, KZ-REGULATION.md):
the pool's accreditation, the location of this node, and each miner's allotted electricity.

`OperatingRules` builds those compliance components from the config and gives the composition root
three questions to ask: may this login authorize now (`auth_gate`), may it keep getting work and
have shares counted (`work_gate`), and may this node hand out work at all (`node_may_work`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from compliance.accreditation import AccreditationGuard, accreditation_from_settings
from compliance.attestation import LocationAttestor
from compliance.curtailment import CurtailmentEnforcer
from compliance.energy_accounting import EnergyAccountant
from compliance.location_gate import LocationPayoutGate
from compliance.power_plan import plan_from_settings
from compliance.schedule import ScheduleBook
from compliance.work_gate import WorkGate, node_gate

from .config import PoolConfig
from .db import Database

if TYPE_CHECKING:
    from stratum.server import StratumServer

AuditSink = Callable[[str, dict], None]


class OperatingRules:
    def __init__(self, cfg: PoolConfig, db: Database, audit: AuditSink, server: Callable[[], "StratumServer"],
                 energy_writer: bool = True) -> None:
        loc, node_name = cfg.location, cfg.location.node_id or f"node-{cfg.node_id}"
        self.accreditation = AccreditationGuard(accreditation_from_settings(cfg.accreditation),
                                                production=cfg.mode == "production", audit=audit,
                                                warn_days=cfg.accreditation.warn_days)

        def sessions_of(login: str | None):
            return lambda account: login is None or account.login == login

        def connected_logins() -> set[str]:
            return {a.login for c in server().connections.values() for a in c.session.workers.values()}

        self.attestor = LocationAttestor(
            db, node_id=node_name, datacentre_id=loc.datacentre, public_addresses=list(loc.public_addresses),
            mmdb_path=loc.mmdb_path, delegated_stats_path=loc.delegated_stats_path, mode=loc.mode,
            check_interval_s=loc.check_interval_s, activity_interval_s=loc.activity_interval_s, audit=audit,
            shares_accepted=lambda: server().stats.shares[("accepted", "")],
            on_withhold=lambda text: server().show_message(sessions_of(None), text, disconnect=True))
        plan = plan_from_settings(cfg.electricity)
        self.energy = EnergyAccountant(db, plan, interval_s=cfg.energy.update_s,
                                       recompute_hours=cfg.energy.recompute_hours, writer=energy_writer)
        self.curtailment = CurtailmentEnforcer(
            db, ScheduleBook(plan), grace_s=cfg.curtailment.grace_s, poll_s=cfg.curtailment.poll_s,
            connected_logins=connected_logins, quota=lambda: self.energy.quota, audit=audit, node_id=node_name,
            hour_usage=lambda: self.energy.hour_usage, volume_reserve_s=cfg.curtailment.volume_reserve_s,
            on_block=lambda login, text, disconnect: server().show_message(sessions_of(login), text,
                                                                           disconnect=disconnect))
        # Work: the node's location and the miner's electricity. Authorization additionally needs a
        # valid accreditation, which stops *new* miners only.
        self.work_gate = WorkGate([node_gate(self.attestor.node_may_work, self.attestor.withheld_text),
                                   self.curtailment.blocked_reason])
        self.auth_gate = WorkGate([*self.work_gate.gates, lambda login: self.accreditation.blocked_text()])
        self.payout_gates = [LocationPayoutGate(db, mode=loc.mode, window_s=loc.payout_window_s,
                                                accreditation=self.accreditation)]

    def node_may_work(self) -> bool:
        return self.attestor.node_may_work()

    async def start(self) -> None:
        await self.accreditation.start()
        await self.attestor.start()
        await self.energy.start()
        await self.curtailment.start()

    async def stop(self) -> None:
        await self.curtailment.stop()
        await self.energy.stop()
        await self.attestor.stop()            # writes the last per-minute share counts
        await self.accreditation.stop()
