"""Distribution reports (kz-mof-2026-v1): one row per part of each payout with the miner's
identity from the registry, Kazakhstan dates, the exchange share and the commission; and the
submitter: HTTPS with a real certificate check, retries, a record of what was accepted, and each
distribution filed once."""
from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from payouts.deposits import set_deposit
from payouts.gates import LicenceGate
from payouts.ledger import Ledger
from payouts.models import ReportSubmission
from payouts.report_submitter import ReportSubmitter
from payouts.reports import SCHEMA_V1, SCHEMAS, distribution_rows, render_csv, render_json
from payouts.run_store import RunStore
from payouts.runner import PayoutRunner
from payouts.settings import PayoutSettings
from payouts.wallet_rpc import WalletRpc
from pool.db import Database

from payout_fixtures import (audit_records, clock, ledger, payout_db, regtest_address, seeded_registry,  # noqa: F401
                             test_iin, wallet)
from report_endpoint import ReportEndpoint
from test_payout_run import credit

# 20:30 UTC on 15 June is already 16 June in Kazakhstan (UTC+5): the report counts KZ days.
EVENING_UTC = datetime(2026, 6, 15, 20, 30, tzinfo=UTC)


@pytest.fixture
async def paid(payout_db: Database, ledger: Ledger, clock, wallet, audit_records, tmp_path: Path):
    clock.moment = EVENING_UTC
    registry = await seeded_registry(payout_db, ("alice", "bolat"), clock)
    client = WalletRpc(wallet.url, user=wallet.user, password=wallet.password, timeout_s=5)
    await credit(ledger, "alice", 1_000_000, 10_101)
    await credit(ledger, "bolat", 200_000, 2_020)
    await set_deposit(payout_db, "alice", "aifc-ataix", regtest_address("ataix-alice"), 6_000, network="regtest",
                      eligible=("aifc-ataix",), clock=clock)
    settings = PayoutSettings(threshold_sats=100_000, eligible_exchanges=("aifc-ataix",),
                              exchange_min_share_bps=("2025:5000",))
    runner = PayoutRunner(payout_db, ledger, client, LicenceGate(registry, "regtest", clock.now), settings,
                          clock=clock)
    result = await runner.run()
    assert result.status == "sent"
    yield registry, RunStore(payout_db, ledger, clock), result, runner
    await client.close()


async def test_rows_carry_identity_kz_date_exchange_share_and_commission(paid):
    registry, store, result, _ = paid
    rows = await distribution_rows(store, registry, date(2026, 6, 16), date(2026, 6, 16))
    assert [(r["miner_iin_bin"], r["destination"], r["quantity_sats"]) for r in rows] == [
        (test_iin(1), "wallet", 400_000), (test_iin(1), "exchange", 600_000), (test_iin(2), "wallet", 200_000)]
    alice_wallet, alice_exchange, bolat = rows
    assert [r["serial_no"] for r in rows] == [1, 2, 3]
    assert alice_wallet["miner_name"] == "Miner Alice IE" and alice_wallet["licence_no"] == "KZ-DM-0001"
    assert alice_wallet["licence_issued"] == "2025-01-10" and alice_wallet["wallet"] == regtest_address("alice")
    assert alice_exchange["wallet"] == regtest_address("ataix-alice") and alice_exchange["exchange_share_bps"] == 6_000
    assert alice_exchange["exchange_id"] == "aifc-ataix"
    assert alice_wallet["distribution_date"] == "2026-06-16" and alice_wallet["utc_date"] == "2026-06-15"
    assert alice_wallet["quantity"] == "0.00400000" and alice_exchange["quantity"] == "0.00600000"
    assert alice_wallet["commission_sats"] + alice_exchange["commission_sats"] == 10_101
    assert bolat["commission_quantity"] == "0.00002020" and bolat["txid"] == result.txid
    assert len({r["distribution_id"] for r in rows}) == 3
    assert await distribution_rows(store, registry, date(2026, 6, 15), date(2026, 6, 15)) == []
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert list(parsed[0]) == list(SCHEMAS[SCHEMA_V1]) and parsed[2]["quantity_sats"] == "200000"
    document = json.loads(render_json(rows, date(2026, 6, 16), date(2026, 6, 16), pool_bin="940140000385"))
    assert document["schema"] == "kz-mof-2026-v1" and document["pool"]["bin"] == "940140000385"
    assert document["period"] == {"from": "2026-06-16", "to": "2026-06-16", "timezone": "UTC+05:00"}
    assert document["rows"][1]["destination"] == "exchange"


async def test_submitter_retries_records_and_never_files_twice(paid, payout_db, ledger, clock, audit_records,
                                                               tmp_path):
    registry, store, _, runner = paid
    endpoint = ReportEndpoint(tmp_path)
    await endpoint.start()
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)
    submitter = ReportSubmitter(payout_db, endpoint.url, token="qoldau-token", ca_file=str(endpoint.cert),
                                attempts=3, backoff_s=2.0, audit=lambda k, p: audit_records.append((k, p)),
                                clock=clock, sleep=no_wait)
    try:
        day = date(2026, 6, 16)
        rows = await distribution_rows(store, registry, day, day)
        endpoint.script = [503, 200]
        result = await submitter.submit(rows, day, day, schema=SCHEMA_V1)
        assert (result.status, result.attempts, result.rows) == ("accepted", 2, 3) and waits == [2.0]
        headers, body = endpoint.received[-1]
        assert headers["authorization"] == "Bearer qoldau-token" and headers["x-report-schema"] == SCHEMA_V1
        assert [r["serial_no"] for r in body["rows"]] == [1, 2, 3]
        assert (await submitter.submit(rows, day, day, schema=SCHEMA_V1)).status == "nothing"

        await credit(ledger, "bolat", 300_000, ref="second")
        clock.advance(days=1)
        assert (await runner.run()).status == "sent"
        rows = await distribution_rows(store, registry, day, date(2026, 6, 17))
        endpoint.script = [400]
        rejected = await submitter.submit(rows, day, date(2026, 6, 17), schema=SCHEMA_V1)
        assert (rejected.status, rejected.attempts, rejected.rows) == ("rejected", 1, 1)   # only the new one
        accepted = await submitter.submit(rows, day, date(2026, 6, 17), schema=SCHEMA_V1)
        assert accepted.status == "accepted" and endpoint.received[-1][1]["rows"][0]["quantity_sats"] == 300_000
        async with payout_db.engine.connect() as conn:
            statuses = (await conn.execute(select(ReportSubmission.status).order_by(ReportSubmission.id))).scalars()
            assert list(statuses) == ["accepted", "rejected", "accepted"]
        assert [p["action"] for k, p in audit_records if k == "report_submission"] == ["accepted", "rejected",
                                                                                         "accepted"]
        untrusted = ReportSubmitter(payout_db, endpoint.url, attempts=1, clock=clock, sleep=no_wait)
        failed = await untrusted.submit(rows[:0] + [dict(rows[0], distribution_id="never-sent")], day, day,
                                        schema=SCHEMA_V1)
        assert failed.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in failed.response
    finally:
        await endpoint.close()
    with pytest.raises(ValueError, match="https"):
        ReportSubmitter(payout_db, "http://127.0.0.1/api")
