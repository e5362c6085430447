"""One Prometheus endpoint for `kzpool run --workers N`: the supervisor scrapes each worker's
loopback /metrics and serves the union, every series labelled with its `worker`, so dashboards sum
across workers with `sum without (worker)` and an operator can still see one worker misbehave."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .metrics_http import HttpRequest, HttpResponse, HttpServer, start_http_server

log = logging.getLogger("kzpool.metrics")

SCRAPE_TIMEOUT_S = 5.0


async def fetch_metrics(port: int, host: str = "127.0.0.1") -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), SCRAPE_TIMEOUT_S)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), SCRAPE_TIMEOUT_S)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"worker metrics on port {port} answered {head[:40]!r}")
    return body.decode()


def merge_families(texts: dict[int, str]) -> list[Metric]:
    merged: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                           family.unit))
            for s in family.samples:
                target.samples.append(Sample(s.name, {**s.labels, "worker": str(worker)}, s.value,
                                             s.timestamp, s.exemplar))
    return list(merged.values())


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def start_merged_metrics_server(worker_ports: Callable[[], dict[int, int]], host: str,
                                      port: int) -> HttpServer:
    async def metrics(_request: HttpRequest) -> HttpResponse:
        ports = worker_ports()
        results = await asyncio.gather(*(fetch_metrics(p) for p in ports.values()), return_exceptions=True)
        texts = {}
        for worker, result in zip(ports, results):
            if isinstance(result, BaseException):
                log.warning("worker_scrape_failed worker=%d error=%s", worker, type(result).__name__)
            else:
                texts[worker] = result
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(merge_families(texts)))
        return HttpResponse(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return await start_http_server({"/metrics": metrics}, host, port, "metrics-merged")
