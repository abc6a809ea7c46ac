"""The service's Prometheus figures, and the scraper that appends the sidecar's (fetched through
the sidecar client, since the sidecar has no network) to them."""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from oauth3.runtime.metrics import AGENT_BUCKETS, REQUEST_BUCKETS, SIDECAR_PREFIX, RequestFigures

from .sidecar_client import MAX_ANSWER_BYTES, AgentError, SidecarClient

MAX_SIDECAR_METRICS_BYTES = MAX_ANSWER_BYTES
QUOTE_OUTCOMES = ("cached", "fresh", "coalesced", "refreshed", "batched", "rejected")
BATCH_BUCKETS = tuple(float(2**n) for n in range(13))

log = structlog.get_logger("metrics")


class ServiceMetrics(RequestFigures):
    """The service's figures, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        super().__init__("oauth3_", self.registry)
        ProcessCollector(registry=self.registry)
        self._quotes = dict.fromkeys(QUOTE_OUTCOMES, 0)
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

    def count_quote(self, outcome: str) -> None:
        """Count one quote served (or refused) with this outcome (one of QUOTE_OUTCOMES).

        A plain count, exposed at scrape time as RequestFigures does: prometheus-client's
        labelled Counter.inc took a lock and about as long as the rest of a cached request's
        own code.
        """
        self._quotes[outcome] += 1

    def describe(self) -> list[Metric]:
        """The families this collector owns: the request figures and quotes by outcome."""
        return [*super().describe(), _quote_family()]

    def collect(self) -> list[Metric]:
        """The current request figures and quote counts."""
        quotes = _quote_family()
        for outcome, count in self._quotes.items():
            quotes.add_metric([outcome], count)
        return [*super().collect(), quotes]

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


def _quote_family() -> CounterMetricFamily:
    return CounterMetricFamily(
        "oauth3_quotes",
        "Quotes served by outcome: cached, fresh, coalesced, refreshed, batched or rejected",
        labels=["outcome"],
    )


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


class ServiceScraper:
    """Renders the service's figures followed by the sidecar's, fetched through the service's
    sidecar client (whose session the app's sidecar cleanup_ctx opens and closes)."""

    def __init__(self, metrics: ServiceMetrics, sidecar: SidecarClient, timeout: float) -> None:
        self._metrics = metrics
        self._sidecar = sidecar
        self._timeout = timeout

    async def start(self) -> None:
        """Nothing to open: the sidecar client is the app's."""

    async def close(self) -> None:
        """Nothing to close: the sidecar client is the app's."""

    async def _sidecar_text(self) -> bytes | None:
        try:
            body = await self._sidecar.metrics_text(self._timeout)
        except AgentError as exc:
            log.warning("sidecar_metrics_unavailable", detail=exc.log_detail or exc.reason)
            return None
        text = checked_sidecar_text(body)
        if text is None:
            log.warning("sidecar_metrics_refused", size=len(body))
        return text

    async def render(self) -> bytes:
        """The whole exposition; a failed sidecar fetch only sets oauth3_sidecar_metrics_up 0."""
        sidecar = await self._sidecar_text()
        self._metrics.sidecar_metrics_up.set(0 if sidecar is None else 1)
        return generate_latest(self._metrics.registry) + (sidecar or b"")
