"""Distribution reports for the state revenue bodies (Ministry of Finance form of 20 February 2026,
filed through the Qoldau.kz API).

One row per distribution: each part of a payout sent to a miner (its wallet, and its licensed
exchange deposit when it has one), in the order the payouts were sent. The form's head is
confirmed: serial number, miner IIN/BIN, name, licence number and issue date, wallet, date of
distribution; its tail (asset, quantity, the pool's commission as asset and quantity) is
confirmed only for the earlier monthly form, so the schema is versioned: `kz-mof-2026-v1` is this
layout, and a changed form becomes a new entry in SCHEMAS rather than an edit of this one.

Dates: `distribution_date` is the Kazakhstan calendar day (UTC+5) the payment was sent, which is
how `--from`/`--to` select rows (both inclusive); `utc_date` is the UTC day the tax authority
values the asset on (CoinMarketCap's daily average). Quantities are BTC decimal strings with 8
places, plus the exact satoshis. IIN/BIN and names come decrypted from the registry: a report is
personal data and is written only where the operator asks.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time as day_time, timedelta
from typing import Any

from compliance.registry import LicenceRegistry, RegistryError
from compliance.standing import KZ_TIME

from .run_store import SENT, RunStore
from .wallet_rpc import btc_string

SCHEMA_V1 = "kz-mof-2026-v1"
SCHEMAS: dict[str, tuple[str, ...]] = {
    SCHEMA_V1: ("serial_no", "distribution_id", "miner_iin_bin", "miner_name", "licence_no", "licence_issued",
                "wallet", "destination", "exchange_id", "exchange_share_bps", "distribution_date",
                "distribution_time_utc", "utc_date", "asset", "quantity", "quantity_sats", "commission_asset",
                "commission_quantity", "commission_sats", "txid", "payout_run"),
}
FORMATS = ("csv", "json")


def kz_day_bounds_us(first: date, last: date) -> tuple[int, int]:
    """[start of `first`, start of the day after `last`) in Kazakhstan time, as UTC microseconds."""
    start = datetime.combine(first, day_time(0), KZ_TIME)
    end = datetime.combine(last + timedelta(days=1), day_time(0), KZ_TIME)
    return round(start.timestamp() * 1e6), round(end.timestamp() * 1e6)


async def distribution_rows(store: RunStore, registry: LicenceRegistry | None, first: date, last: date, *,
                            asset: str = "BTC", schema: str = SCHEMA_V1) -> list[dict[str, Any]]:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown report schema {schema!r}; known: {sorted(SCHEMAS)}")
    lo, hi = kz_day_bounds_us(first, last)
    identities: dict[str, tuple[str, str]] = {}
    rows: list[dict[str, Any]] = []
    for run in await store.runs([SENT], sent_from_us=lo, sent_to_us=hi):
        sent = datetime.fromtimestamp((run.sent_us or 0) / 1e6, UTC)
        for item_no, item in enumerate(run.items, 1):
            if item.login not in identities:
                identities[item.login] = await _identity(registry, item.login)
            iin_bin, name = identities[item.login]
            for kind, address, sats, commission in item.parts():
                rows.append({
                    "serial_no": len(rows) + 1,
                    "distribution_id": f"{run.id}-{item_no}-{'x' if kind.startswith('exchange') else 'w'}",
                    "miner_iin_bin": iin_bin, "miner_name": name, "licence_no": item.licence_no,
                    "licence_issued": item.licence_issued.isoformat(), "wallet": address,
                    "destination": "exchange" if kind.startswith("exchange") else "wallet",
                    "exchange_id": item.exchange_id, "exchange_share_bps": item.exchange_share_bps,
                    "distribution_date": sent.astimezone(KZ_TIME).date().isoformat(),
                    "distribution_time_utc": sent.isoformat().replace("+00:00", "Z"),
                    "utc_date": sent.date().isoformat(), "asset": asset, "quantity": btc_string(sats),
                    "quantity_sats": sats, "commission_asset": asset, "commission_quantity": btc_string(commission),
                    "commission_sats": commission, "txid": run.txid or "", "payout_run": run.id})
    return rows


async def _identity(registry: LicenceRegistry | None, login: str) -> tuple[str, str]:
    if registry is None:
        return "", ""
    try:
        view = await registry.show(login, reveal=True)
    except RegistryError:
        return "", ""        # the licence was deleted since: the row still reports the payment
    return view.iin_bin, view.name


def render_csv(rows: Sequence[dict[str, Any]], schema: str = SCHEMA_V1) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SCHEMAS[schema], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def report_document(rows: Sequence[dict[str, Any]], first: date, last: date, *, schema: str = SCHEMA_V1,
                    pool_bin: str = "", pool_name: str = "", generated_at: datetime | None = None) -> dict[str, Any]:
    moment = generated_at or datetime.now(UTC)
    return {"schema": schema, "pool": {"bin": pool_bin, "name": pool_name},
            "period": {"from": first.isoformat(), "to": last.isoformat(), "timezone": "UTC+05:00"},
            "generated_at": moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "rows": [{k: row[k] for k in SCHEMAS[schema]} for row in rows]}


def render_json(rows: Sequence[dict[str, Any]], first: date, last: date, **kw: Any) -> str:
    return json.dumps(report_document(rows, first, last, **kw), ensure_ascii=False, indent=1) + "\n"
