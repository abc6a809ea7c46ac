"""The service's aiohttp app factory: routes, typed app keys and one cleanup_ctx per resource."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources

import structlog
from aiohttp import web

from oauth3.attestation import LAYOUT, LAYOUT_V2
from oauth3.runtime import package_version
from oauth3.runtime.bookkeeping import LOG_FIELDS, REQUEST_ID, RequestBookkeeping, note
from oauth3.runtime.metrics import metrics_listener
from oauth3.runtime.problem import Problem

from .identity import InfoDocument, build_info_document
from .metrics import ServiceMetrics, ServiceScraper
from .query import AttestationQuery, QueryError, parse_attestation_query
from .quotes import QuoteOutcome, QuoteProvider
from .settings import ServiceSettings
from .sidecar_client import AgentError, SidecarClient

DISTRIBUTION = "oauth3-service"  # /info names its version
SETTINGS = web.AppKey("settings", ServiceSettings)
INFO = web.AppKey("info", InfoDocument)
SIDECAR = web.AppKey("sidecar", SidecarClient)
QUOTES = web.AppKey("quotes", QuoteProvider)
OPENAPI = web.AppKey("openapi", bytes)
METRICS = web.AppKey("metrics", ServiceMetrics)

log = structlog.get_logger("service")


async def get_info(request: web.Request) -> web.Response:
    """GET /info: the identity bytes, exactly as hashed into every quote."""
    info = request.app[INFO]
    if "If-None-Match" in request.headers and info.etag in request.headers.getall("If-None-Match"):
        return web.Response(status=304, headers=info.headers)
    return web.Response(body=info.body, headers=info.full_headers)


def _attestation_query(request: web.Request) -> AttestationQuery:
    """The nonce and layout asked for; Problem 400 (a nonce rejection counted) otherwise."""
    try:
        return parse_attestation_query(request.rel_url.raw_query_string)
    except QueryError as exc:
        if exc.about_nonce:
            request.app[METRICS].nonce_rejections.inc()
            note(request, nonce_rejected=True)
        raise Problem(400, str(exc)) from None


def _agent_problem(exc: AgentError) -> Problem:
    log.warning("agent_error", status=exc.status, reason=exc.reason, detail=exc.log_detail)
    retry_after = exc.retry_after if exc.status in (503, 504) else None
    return Problem(exc.status, exc.reason, retry_after=retry_after)


# the cached quote's request line and headers: the same for every such request, built once
_CACHED_NOTES = {"nonce": False, "quote": "cached", "cache_hit": True}
_CACHED_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-cache"}


async def get_attestation(request: web.Request) -> web.Response:
    """GET /attestation[?nonce=<64 hex>]: a quote whose report_data binds /info (and the nonce)."""
    nonce, layout = None, LAYOUT
    provider = request.app[QUOTES]
    if request.rel_url.raw_query_string:  # the cached quote's requests have none: no parsing
        query = _attestation_query(request)
        nonce, layout = query.nonce, query.layout
    else:
        cached = provider.cached_now()
        if cached is not None:  # the hot path: nothing to wait for
            request.app[METRICS].count_quote("cached")
            request[LOG_FIELDS].update(_CACHED_NOTES)
            return web.Response(body=cached.served.body, headers=_CACHED_HEADERS)
    metrics = request.app[METRICS]
    try:
        outcome: QuoteOutcome
        if nonce is None:
            outcome = await provider.cached(request[REQUEST_ID])
        elif layout == LAYOUT_V2:
            outcome = await provider.batched(nonce, request[REQUEST_ID])
        else:
            outcome = await provider.fresh(nonce, request[REQUEST_ID])
    except AgentError as exc:
        metrics.count_quote("rejected")
        note(
            request,
            nonce=nonce is not None,
            quote="rejected",
            cache_hit=False,
            agent_error=exc.reason,
        )
        raise _agent_problem(exc) from None
    metrics.count_quote(outcome.source)
    agent = outcome.served.agent
    waited = outcome.source != "cached"
    note(
        request,
        nonce=nonce is not None,
        quote=outcome.source,
        cache_hit=not waited,
        queue_ms=agent.queue_ms if waited else None,
        agent_ms=agent.agent_ms if waited else None,
    )
    cache_control = "no-store" if nonce is not None else "no-cache"
    return web.Response(
        body=outcome.served.body,
        content_type="application/json",
        headers={"Cache-Control": cache_control},
    )


async def get_openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the API contract (OpenAPI 3.1), as checked in."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up; touches nothing."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the sidecar answers and the agent behind it answers Info."""
    settings = request.app[SETTINGS]
    try:
        await request.app[SIDECAR].agent_info(request[REQUEST_ID], settings.ready_timeout)
    except AgentError as exc:
        note(request, not_ready=exc.reason)
        raise Problem(503, f"not ready: {exc.reason}", retry_after=settings.retry_after) from None
    age = request.app[QUOTES].cache_age
    return web.json_response({"status": "ready", "cached_quote_age_s": age})


async def sidecar_client(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the sidecar client's session, and the quote provider over it."""
    settings = app[SETTINGS]
    client = app[SIDECAR]
    await client.start()
    provider = QuoteProvider(
        client,
        app[INFO].digest,
        refresh_interval=settings.cache_refresh_interval,
        max_age=settings.cache_max_age,
        retry_after=settings.retry_after,
        max_pending=settings.max_pending_quotes,
        max_batch=settings.max_batch,
        batch_wait=settings.batch_wait,
        metrics=app[METRICS],
    )
    app[QUOTES] = provider
    app[METRICS].watch_cache_age(lambda: provider.cache_age)
    yield
    await provider.close()
    await client.close()


async def quote_refresher(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the background task that keeps the cached quote fresh."""
    task = asyncio.create_task(app[QUOTES].run_refresher(), name="quote-refresher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: ServiceSettings, *, app_version: str | None = None) -> web.Application:
    """The public API. `/info` bytes are fixed here, once, for the life of the app."""
    metrics = ServiceMetrics()
    app = web.Application(client_max_size=1024)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[INFO] = build_info_document(
        settings.build_info, app_version or package_version(DISTRIBUTION)
    )
    app[SIDECAR] = SidecarClient(
        settings.sidecar_socket, timeout=settings.quote_timeout, retry_after=settings.retry_after
    )
    app.cleanup_ctx.append(sidecar_client)
    app.cleanup_ctx.append(quote_refresher)
    if settings.metrics_port:
        scraper = ServiceScraper(metrics, app[SIDECAR], settings.ready_timeout)
        app.cleanup_ctx.append(
            metrics_listener(settings.metrics_host, settings.metrics_port, scraper)
        )
    bookkeeping = RequestBookkeeping(
        "service", observe=metrics.observe_request, refuse_get_bodies=True
    )
    bookkeeping.add_routes(
        app,
        [
            web.get("/info", get_info),
            web.get("/attestation", get_attestation),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/openapi.json", get_openapi),
        ],
    )
    app[OPENAPI] = resources.files("oauth3.service").joinpath("openapi.json").read_bytes()
    return app
