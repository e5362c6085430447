"""The admin endpoint: GET /status as JSON, for `kzpool status`. Localhost only.

It binds only a loopback address (anything else is refused at start) and answers only loopback
peers, because the status names logins, nodes and blocks. What it reports is read from the running
pool at request time, like metrics; features that have not landed yet (location attestation,
curtailments) are reported as `{"state": "unavailable", ...}`, never with made-up values, until they
register a section through `status_sections`.
"""
from __future__ import annotations

import ipaddress
import json
import time
from typing import TYPE_CHECKING, Any, Callable

from stratum.session import State

from .metrics import metrics_for, pool_version
from .metrics_http import HttpRequest, HttpResponse, HttpServer, start_http_server

if TYPE_CHECKING:
    from .app import PoolApp

StatusSection = Callable[[], Any]
# Sections whose features are not built yet; a feature replaces its entry when it lands.
PENDING_SECTIONS = {"attestation": "location attestation is not built yet",
                    "curtailments": "electricity-schedule curtailments are not built yet"}
TOP_LOGINS = 10


class AdminHostNotLocal(ValueError):
    """admin.host is not a loopback address."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def pool_status(app: "PoolApp", sections: dict[str, StatusSection] | None = None) -> dict[str, Any]:
    metrics = metrics_for(app)
    by_state = {s.name.lower(): 0 for s in State}
    workers, logins = 0, set[str]()
    for conn in app.server.connections.values():
        by_state[conn.session.state.name.lower()] += 1
        workers += len(conn.session.workers)
        logins.update(acc.login for acc in conn.session.workers.values())
    stats, book = app.server.stats, app.sink.blocks
    accepted = stats.shares.get(("accepted", ""), 0)
    out: dict[str, Any] = {
        "pool": {"version": pool_version(), "mode": app.cfg.mode, "source": app.source.name,
                 "hasher": app.hasher.name, "time": time.time()},
        "hashrate": {"window_s": metrics.work.window_s, "pool_hps": metrics.work.total(),
                     "top_logins": [{"login": metrics.login_label(login), "hps": hps}
                                    for login, hps in metrics.work.top(TOP_LOGINS)]},
        "connections": by_state, "workers": workers, "logins": len(logins),
        "shares": {"accepted": accepted, "rejected": sum(n for (r, _), n in stats.shares.items() if r != "accepted"),
                   "accepted_difficulty": stats.accepted_difficulty},
        "chain": _chain(app, metrics.timer.tip_at),
        "blocks": {"found": stats.blocks_found, "submitted": book.submitted, "accepted": book.accepted,
                   "rejected": book.rejected},
        "last_block": _last_block(app),
        "nodes": _nodes(app),
    }
    for name, reason in PENDING_SECTIONS.items():
        out[name] = {"state": "unavailable", "reason": reason}
    for name, section in (sections or {}).items():
        out[name] = section()
    return out


def _chain(app: "PoolApp", tip_at: float) -> dict[str, Any] | None:
    tpl = app.jobs.template
    if tpl is None:
        return None
    now = time.time()
    return {"height": tpl.height, "prev_hash": tpl.prev_hash[::-1].hex(),
            "template_age_s": round(now - app.jobs.last_template_at, 3),
            "tip_age_s": round(now - tip_at, 3) if tip_at else None, "transactions": len(tpl.transactions)}


def _last_block(app: "PoolApp") -> dict[str, Any] | None:
    if not app.sink.blocks.found:
        return None
    b = app.sink.blocks.found[-1]
    return {"height": b.height, "hash": b.hash_display, "at": b.at, "accepted": b.accepted,
            "outcomes": [{"node": o.node, "result": o.result or ("accepted" if o.accepted else ""),
                          "error": o.error or ""} for o in b.outcomes]}


def _nodes(app: "PoolApp") -> list[dict[str, Any]]:
    health = getattr(app.source, "health", None)
    if health is None:
        return [{"name": app.source.name, "kind": "in-process"}]     # the simulated chain: no node to watch
    now = time.monotonic()
    return [{"name": n.name, "kind": "bitcoind", "healthy": n.healthy, "stale": n.stale, "failures": n.failures,
             "last_error": n.last_error, "height": n.height, "templates": n.templates,
             "last_ok_age_s": round(now - n.last_ok_s, 3) if n.last_ok_s else None} for n in health()]


async def start_admin_server(app: "PoolApp", host: str, port: int,
                             status_sections: dict[str, StatusSection] | None = None) -> HttpServer:
    """Serves GET /status on a loopback address; raises AdminHostNotLocal for any other host."""
    if not is_loopback(host):
        raise AdminHostNotLocal(f"admin.host = {host!r}: the admin endpoint binds loopback addresses only "
                                "(127.0.0.1 or ::1)")
    sections = status_sections if status_sections is not None else {}

    async def status(_request: HttpRequest) -> HttpResponse:
        body = json.dumps(pool_status(app, sections), indent=2, sort_keys=True).encode() + b"\n"
        return HttpResponse(200, body, "application/json")

    return await start_http_server({"/status": status}, host, port, "admin", allow_peer=is_loopback)
