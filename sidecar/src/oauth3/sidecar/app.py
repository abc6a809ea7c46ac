"""The sidecar's aiohttp app: the only process holding the dstack socket, and what it lets through.

What it allows, and why:

- `POST /GetQuote` with a JSON object whose `report_data` is hex of exactly 64 bytes (an optional
  `0x` prefix aside). The agent would zero-pad anything shorter, so a caller could obtain a quote
  over bytes it never chose; the service only ever sends a full oauth3 report_data, so anything
  else, a missing field included, is refused with 400. The agent gets a body the sidecar builds,
  `{"report_data": "<lowercase hex>"}`: no other field, no duplicate key (a second `report_data`
  could otherwise reach the agent unchecked), one quote at a time behind a bounded queue. A quote
  only signs caller data; it grants no power.
- `POST /Info` with an empty body or a JSON object; the agent gets `{}`. Info is public anyway.
- `GET /healthz` and `GET /metrics` (its own figures; it has no network).
- Everything else is 403: GetKey and GetTlsKey (the app's keys), Sign, EmitEvent (which would
  extend RTMR3), Attest and any future method stay unreachable from the internet-facing service.
- Redirects from the agent are never followed (a 307 could aim a POST at /GetKey): they are 502.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from oauth3.runtime.bodies import read_capped
from oauth3.runtime.bookkeeping import REQUEST_ID, REQUEST_ID_HEADER, RequestBookkeeping, note
from oauth3.runtime.metrics import exposition
from oauth3.runtime.problem import Problem
from oauth3.runtime.sidecar_protocol import (
    AGENT_MS_HEADER,
    GET_QUOTE_PATH,
    INFO_PATH,
    METRICS_PATH,
    QUEUE_MS_HEADER,
    quotes_held,
)

from .metrics import SidecarMetrics
from .settings import SidecarSettings

MAX_AGENT_RESPONSE_BYTES = 1 << 20
REPORT_DATA_BYTES = 64
_HEX = frozenset("0123456789abcdefABCDEF")


class QueueFullError(Exception):
    """More quote requests are pending than the queue allows."""


class QuoteGate:
    """One quote at a time (the agent serialises anyway), with at most `queue_size` waiting."""

    def __init__(self, queue_size: int) -> None:
        self._lock = asyncio.Lock()
        self.capacity = quotes_held(queue_size)  # at the agent plus waiting
        self.pending = 0

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for our turn; raise QueueFullError at once when the queue is full."""
        if self.pending >= self.capacity:
            raise QueueFullError
        self.pending += 1
        try:
            async with self._lock:
                yield
        finally:
            self.pending -= 1


SETTINGS = web.AppKey("settings", SidecarSettings)
AGENT = web.AppKey("agent", aiohttp.ClientSession)
GATE = web.AppKey("gate", QuoteGate)
METRICS = web.AppKey("metrics", SidecarMetrics)


class _DuplicateKey(ValueError):
    """A JSON object names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey
    return dict(pairs)


def _json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (empty means {}); duplicate keys refused."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        raise Problem(400, "request body names a key twice") from None
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise Problem(400, "request body must be a JSON object")
    return doc


def validate_quote_request(body: bytes) -> bytes:
    """The body to forward for a GetQuote request: built here, `{"report_data": "<hex>"}`, from a
    JSON object whose report_data is hex of exactly 64 bytes; Problem(400) otherwise."""
    request = _json_object(body)
    if "report_data" not in request:
        raise Problem(400, "report_data is required (hex of exactly 64 bytes)")
    report_data = request["report_data"]
    if not isinstance(report_data, str):
        raise Problem(400, "report_data must be a hex string")
    digits = report_data.removeprefix("0x")
    if any(c not in _HEX for c in digits):
        raise Problem(400, "report_data contains a non-hex character")
    if len(digits) % 2:
        raise Problem(400, "report_data has an odd number of hex digits")
    if len(digits) != REPORT_DATA_BYTES * 2:
        raise Problem(
            400, f"report_data must be exactly {REPORT_DATA_BYTES} bytes, not {len(digits) // 2}"
        )
    return orjson.dumps({"report_data": digits.lower()})


async def _forward(request: web.Request, method: str, body: bytes, limit_s: float) -> web.Response:
    """POST `body` to the agent's `/method` and relay its answer unchanged."""
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request[REQUEST_ID]}
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            async with request.app[AGENT].post(
                f"http://dstack/{method}", data=body, headers=headers, allow_redirects=False
            ) as answer:
                payload = await read_capped(answer, MAX_AGENT_RESPONSE_BYTES + 1)
                status = answer.status
                content_type = answer.headers.get("Content-Type", "application/json")
    except TimeoutError:
        note(request, agent_error="timeout")
        metrics.agent_error("timeout")
        raise Problem(504, "the guest agent did not answer in time") from None
    except aiohttp.ClientPayloadError:
        note(request, agent_error="dropped")
        metrics.agent_error("dropped")
        raise Problem(502, "the guest agent dropped the connection mid-answer") from None
    except (aiohttp.ClientConnectionError, OSError):
        note(request, agent_error="unavailable")
        metrics.agent_error("unavailable")
        raise Problem(
            503, "the guest agent is unavailable", retry_after=request.app[SETTINGS].retry_after
        ) from None
    agent_ms = round((time.perf_counter() - started) * 1000, 3)
    metrics.agent_seconds.labels(method).observe(agent_ms / 1000)
    if len(payload) > MAX_AGENT_RESPONSE_BYTES:
        note(request, agent_error="oversized")
        metrics.agent_error("oversized")
        raise Problem(502, "the guest agent's answer is too large")
    if 300 <= status < 400:
        note(request, agent_error="redirect")
        metrics.agent_error("http_error")
        raise Problem(502, "the guest agent answered with a redirect, which is never followed")
    if status != 200:
        metrics.agent_error("http_error")
    note(request, agent_ms=agent_ms, agent_status=status)
    response = web.Response(status=status, body=payload, headers={"Content-Type": content_type})
    response.headers[AGENT_MS_HEADER] = str(agent_ms)
    return response


async def get_quote(request: web.Request) -> web.Response:
    """POST /GetQuote: validated, then forwarded one at a time behind the bounded queue."""
    body = validate_quote_request(await request.read())
    settings = request.app[SETTINGS]
    gate = request.app[GATE]
    queued_at = time.perf_counter()
    note(request, queue_depth=gate.pending)
    queue_ms: float | None = None
    try:
        async with asyncio.timeout(settings.quote_timeout), gate.turn():
            queue_ms = round((time.perf_counter() - queued_at) * 1000, 3)
            note(request, queue_ms=queue_ms)
            request.app[METRICS].queue_seconds.observe(queue_ms / 1000)
            remaining = settings.quote_timeout - queue_ms / 1000
            response = await _forward(request, "GetQuote", body, max(remaining, 0.001))
    except QueueFullError:
        note(request, rejected="queue_full")
        request.app[METRICS].queue_rejections.inc()
        raise Problem(
            503, "too many quote requests are waiting", retry_after=settings.retry_after
        ) from None
    except TimeoutError:
        kind = "timeout_in_queue" if queue_ms is None else "timeout"
        note(request, agent_error=kind)
        request.app[METRICS].agent_error(kind)
        raise Problem(504, "the guest agent did not answer in time") from None
    response.headers[QUEUE_MS_HEADER] = str(queue_ms)
    return response


async def info(request: web.Request) -> web.Response:
    """POST /Info: an empty body or a JSON object, forwarded as `{}` (the agent answers it
    without the quote lock)."""
    _json_object(await request.read())
    return await _forward(request, "Info", b"{}", request.app[SETTINGS].info_timeout)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the sidecar process is up (touches nothing else)."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the sidecar's Prometheus figures (no network here; the service relays them)."""
    return exposition(request.app[METRICS].registry)


async def refuse(request: web.Request) -> web.Response:
    """Every other method and path: 403, so keys, signing and RTMR extension stay unreachable."""
    note(request, refused=request.path)
    raise Problem(403, "only POST /GetQuote and POST /Info are forwarded by this sidecar")


def agent_session(settings: SidecarSettings) -> Any:
    """cleanup_ctx entry: one ClientSession over a UnixConnector to the agent socket."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # keep-alive shorter than the agent's own (10 s) so we never reuse a closed connection
        connector = aiohttp.UnixConnector(path=str(settings.agent_socket), keepalive_timeout=5)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[AGENT] = session
            yield

    return ctx


def create_app(settings: SidecarSettings) -> web.Application:
    """The sidecar app: POST /GetQuote, POST /Info, GET /healthz, GET /metrics; else 403."""
    gate = QuoteGate(settings.queue_size)
    figures = SidecarMetrics(lambda: gate.pending)
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[GATE] = gate
    app[METRICS] = figures
    app.cleanup_ctx.append(agent_session(settings))
    bookkeeping = RequestBookkeeping("sidecar", error_member=True, observe=figures.observe_request)
    bookkeeping.add_routes(
        app,
        [
            web.post(GET_QUOTE_PATH, get_quote),
            web.post(INFO_PATH, info),
            web.get("/healthz", healthz),
            web.get(METRICS_PATH, metrics),
        ],
        otherwise=refuse,
    )
    return app
