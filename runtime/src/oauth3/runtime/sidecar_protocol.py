"""The service↔sidecar contract: the socket both open, the paths the sidecar forwards, the timing
headers it answers with, and the bound of its quote queue, from which the service derives its own.

It lives in the runtime because that is the one package both sides may import (the sidecar
imports nothing else of ours; the service must not import the sidecar)."""

from __future__ import annotations

from pathlib import Path

from .env_settings import integer, path

SOCKET = path(
    "OAUTH3_SIDECAR_SOCKET",
    Path("/var/run/oauth3/sidecar.sock"),
    "the sidecar's unix socket (the sidecar serves it, the service connects to it)",
)

GET_QUOTE_PATH = "/GetQuote"  # POST {"report_data": "<hex of exactly 64 bytes>"}
INFO_PATH = "/Info"  # POST {} (the readiness probe)
METRICS_PATH = "/metrics"  # GET: the sidecar's own Prometheus figures, oauth3_sidecar_* only

# how long the sidecar held a quote request in its queue and in the agent (ms), on each answer
QUEUE_MS_HEADER = "X-Oauth3-Queue-Ms"
AGENT_MS_HEADER = "X-Oauth3-Agent-Ms"

QUEUE_SIZE = integer(
    "OAUTH3_SIDECAR_QUEUE_SIZE",
    16,
    1,
    10_000,
    "quote requests waiting behind the one at the agent (the service derives its bound from it)",
)


def quotes_held(queue_size: int) -> int:
    """The most quote requests a sidecar with this queue holds at once: one at the agent and
    `queue_size` waiting; one more is refused with 503."""
    return queue_size + 1
