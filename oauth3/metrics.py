"""Prometheus metrics: per-app registries, a listener apart from the API, the sidecar folded in."""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from prometheus_client.parser import text_string_to_metric_families

SIDECAR_PREFIX = "oauth3_sidecar_"
_REQUESTS_HELP = "HTTP requests answered, by route and status"
_LATENCY_HELP = "Time from request to response, by route"
_REQUEST_LABELS = ["route", "status"]
MAX_SIDECAR_METRICS_BYTES = 1 << 20
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BUCKET_LABELS = [*(repr(float(bound)) for bound in REQUEST_BUCKETS), "+Inf"]
AGENT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
QUOTE_OUTCOMES = ("cached", "fresh", "coalesced", "refreshed", "batched", "rejected")
BATCH_BUCKETS = tuple(float(2**n) for n in range(13))
AGENT_ERROR_KINDS = (
    "unavailable",
    "timeout",
    "timeout_in_queue",
    "dropped",
    "oversized",
    "http_error",
)

log = structlog.get_logger("metrics")


class _RequestFigures:
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


class ServiceMetrics(_RequestFigures):
    """The service's figures, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        super().__init__("oauth3_", self.registry)
        ProcessCollector(registry=self.registry)
        self.quotes = Counter(
            "oauth3_quotes",
            "Quotes served by outcome: cached, fresh, coalesced, refreshed or rejected",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in QUOTE_OUTCOMES:
            self.quotes.labels(outcome)
        self.agent_seconds = Histogram(
            "oauth3_agent_call_seconds",
            "Time the agent took for one quote, as measured by the sidecar",
            buckets=AGENT_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "oauth3_quote_queue_seconds",
            "Time one quote request waited in the sidecar's queue",
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.sidecar_call_seconds = Histogram(
            "oauth3_sidecar_call_seconds",
            "Round trip of one GetQuote through the sidecar, as measured by the service",
            buckets=AGENT_BUCKETS,
            registry=self.registry,
        )
        self.cache_age = Gauge(
            "oauth3_cached_quote_age_seconds",
            "Age of the cached nonce-less quote (+Inf while there is none)",
            registry=self.registry,
        )
        self.cache_age.set(math.inf)
        self.batch_size = Histogram(
            "oauth3_quote_batch_size",
            "Distinct nonces in one oauth3/v2 quote",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.cache_refreshes = Counter(
            "oauth3_cache_refreshes",
            "Background refreshes of the cached quote, by result (ok, error)",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "error"):
            self.cache_refreshes.labels(result)
        self.nonce_rejections = Counter(
            "oauth3_nonce_rejections",
            "Requests refused because of their nonce (malformed, all-zero or repeated)",
            registry=self.registry,
        )
        self.sidecar_metrics_up = Gauge(
            "oauth3_sidecar_metrics_up",
            "1 when the sidecar's metrics were fetched for this scrape, else 0",
            registry=self.registry,
        )

    def watch_cache_age(self, age: Callable[[], float | None]) -> None:
        """Compute the cache-age gauge at scrape time from `age` (None: no cached quote)."""

        def current() -> float:
            value = age()
            return math.inf if value is None else value

        self.cache_age.set_function(current)

    def observe_agent_call(
        self, round_trip_s: float, agent_ms: float | None, queue_ms: float | None
    ) -> None:
        """Record one successful GetQuote: our round trip and the sidecar's own timings."""
        self.sidecar_call_seconds.observe(round_trip_s)
        if agent_ms is not None:
            self.agent_seconds.observe(agent_ms / 1000)
        if queue_ms is not None:
            self.queue_seconds.observe(queue_ms / 1000)


class SidecarMetrics(_RequestFigures):
    """The sidecar's figures (all named oauth3_sidecar_*), in a registry of its own."""

    def __init__(self, pending: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        super().__init__(SIDECAR_PREFIX, self.registry)
        ProcessCollector(namespace="oauth3_sidecar", registry=self.registry)
        self.queue_depth = Gauge(
            f"{SIDECAR_PREFIX}queue_depth",
            "Quote requests waiting for or holding the agent",
            registry=self.registry,
        )
        self.queue_depth.set_function(lambda: float(pending()))
        self.queue_rejections = Counter(
            f"{SIDECAR_PREFIX}queue_rejections",
            "Quote requests refused with 503 because the queue was full",
            registry=self.registry,
        )
        self.agent_errors = Counter(
            f"{SIDECAR_PREFIX}agent_errors",
            "Failed calls to the guest agent, by kind",
            ["kind"],
            registry=self.registry,
        )
        for kind in AGENT_ERROR_KINDS:
            self.agent_errors.labels(kind)
        self.agent_seconds = Histogram(
            f"{SIDECAR_PREFIX}agent_call_seconds",
            "Time the guest agent took to answer, by method",
            ["method"],
            buckets=AGENT_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            f"{SIDECAR_PREFIX}queue_wait_seconds",
            "Time a quote request waited for its turn",
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def agent_error(self, kind: str) -> None:
        """Count one failed agent call of this kind."""
        self.agent_errors.labels(kind).inc()


def exposition(registry: CollectorRegistry) -> web.Response:
    """A registry's current figures in the Prometheus text format."""
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})


def checked_sidecar_text(body: bytes) -> bytes | None:
    """The sidecar's exposition if it parses and every family is oauth3_sidecar_*, else None."""
    if len(body) > MAX_SIDECAR_METRICS_BYTES:
        return None
    try:
        text = body.decode("utf-8")
        names = [family.name for family in text_string_to_metric_families(text)]
    except (UnicodeDecodeError, ValueError, TypeError, IndexError):
        return None
    if not all(name.startswith(SIDECAR_PREFIX) for name in names):
        return None
    return body if body.endswith(b"\n") or not body else body + b"\n"


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first `limit` bytes when longer (read(n) may return less)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class ServiceScraper:
    """Renders the service's figures followed by the sidecar's, fetched over its socket."""

    def __init__(self, metrics: ServiceMetrics, sidecar_socket: Path, timeout: float) -> None:
        self._metrics = metrics
        self._socket = sidecar_socket
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session to the sidecar (connected lazily, at the first scrape)."""
        connector = aiohttp.UnixConnector(path=str(self._socket), force_close=True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    async def _sidecar_text(self) -> bytes | None:
        assert self._session is not None, "ServiceScraper.start() was not awaited"
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.get("http://sidecar/metrics") as response:
                    body = await _read_capped(response, MAX_SIDECAR_METRICS_BYTES + 1)
                    status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("sidecar_metrics_unavailable", detail=str(exc) or type(exc).__name__)
            return None
        text = checked_sidecar_text(body) if status == 200 else None
        if text is None:
            log.warning("sidecar_metrics_refused", status=status)
        return text

    async def render(self) -> bytes:
        """The whole exposition; a failed sidecar fetch only sets oauth3_sidecar_metrics_up 0."""
        sidecar = await self._sidecar_text()
        self._metrics.sidecar_metrics_up.set(0 if sidecar is None else 1)
        return generate_latest(self._metrics.registry) + (sidecar or b"")


def metrics_app(render: Callable[[], Awaitable[bytes]]) -> web.Application:
    """A tiny app answering GET /metrics with `render()`; nothing else."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


def metrics_listener(
    host: str, port: int, scraper: ServiceScraper
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
