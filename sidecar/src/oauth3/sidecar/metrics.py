"""The sidecar's Prometheus figures (all oauth3_sidecar_*), served on its own socket."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from oauth3.runtime.metrics import AGENT_BUCKETS, REQUEST_BUCKETS, SIDECAR_PREFIX, RequestFigures

AGENT_ERROR_KINDS = (
    "unavailable",
    "timeout",
    "timeout_in_queue",
    "dropped",
    "oversized",
    "http_error",
)


class SidecarMetrics(RequestFigures):
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
