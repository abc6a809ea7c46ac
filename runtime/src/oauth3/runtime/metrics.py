"""Prometheus plumbing the servers share: request figures counted cheaply, the text exposition,
and a /metrics listener apart from the API."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE

# the sidecar's figures all carry this prefix; the service relays only families that do
SIDECAR_PREFIX = "oauth3_sidecar_"
_REQUESTS_HELP = "HTTP requests answered, by route and status"
_LATENCY_HELP = "Time from request to response, by route"
_REQUEST_LABELS = ["route", "status"]
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BUCKET_LABELS = [*(repr(float(bound)) for bound in REQUEST_BUCKETS), "+Inf"]
AGENT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

log = structlog.get_logger("metrics")


class RequestFigures:
    """Requests by route and status, and latency by route.

    Counted in plain dicts and lists, exposed by a collector at scrape time: prometheus-client's
    Counter.inc and Histogram.observe (a lock each, a bucket loop in Python) were about 4 us of
    every request. No lock is needed: requests and scrapes run on the same event loop thread.
    """

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self._prefix = prefix
        self._counts: dict[tuple[str, int], int] = {}
        # per route: one count per bucket of REQUEST_BUCKETS, then +Inf, then the sum
        self._latencies: dict[str, list[float]] = {}
        registry.register(self)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and record its duration."""
        counts = self._counts
        key = (route, status)
        counts[key] = counts.get(key, 0) + 1
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = [0.0] * (len(REQUEST_BUCKETS) + 2)
        latency[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def describe(self) -> list[Metric]:
        """The two families this collector owns (so the registry refuses duplicates)."""
        return list(self._families())

    def collect(self) -> list[Metric]:
        """The current figures, as prometheus-client's own Counter and Histogram would show."""
        requests, latency = self._families()
        for (route, status), count in sorted(self._counts.items()):
            requests.add_metric([route, str(status)], count)
        for route, figures in sorted(self._latencies.items()):
            cumulative, buckets = 0.0, []
            for label, in_bucket in zip(_BUCKET_LABELS, figures[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((label, cumulative))
            latency.add_metric([route], buckets, sum_value=figures[-1])
        return [requests, latency]

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(f"{self._prefix}requests", _REQUESTS_HELP, labels=_REQUEST_LABELS),
            HistogramMetricFamily(
                f"{self._prefix}request_duration_seconds", _LATENCY_HELP, labels=["route"]
            ),
        )


def exposition(registry: CollectorRegistry) -> web.Response:
    """A registry's current figures in the Prometheus text format."""
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})


class Scraper(Protocol):
    """What a /metrics listener serves: opened and closed with it, rendered per scrape."""

    async def start(self) -> None:
        """Open whatever the rendering needs."""

    async def close(self) -> None:
        """Release it."""

    async def render(self) -> bytes:
        """The exposition text."""
        ...


def metrics_app(render: Callable[[], Awaitable[bytes]]) -> web.Application:
    """A tiny app answering GET /metrics with `render()`; nothing else."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


def metrics_listener(
    host: str, port: int, scraper: Scraper
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx entry: serve /metrics on host:port apart from the API; a busy port only warns."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await scraper.start()
        runner = web.AppRunner(metrics_app(scraper.render), access_log=None, shutdown_timeout=1)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port, reuse_address=True).start()
            except OSError as exc:
                log.warning("metrics_listener_failed", host=host, port=port, detail=str(exc))
            else:
                log.info("metrics_listening", host=host, port=port)
            yield
        finally:
            await runner.cleanup()
            await scraper.close()

    return ctx
