"""The dstack.sock protocol over aiohttp: /GetQuote, /Info and /Version, upstream's wire rules."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web

from oauth3.runtime import package_version
from oauth3.runtime.bookkeeping import WELL_FORMED_REQUEST_ID
from oauth3.runtime.logs import log_request

from .mockdcap import MockDcap
from .settings import SimulatorSettings
from .state import SimulatedCvm, build_cvm, pad_report_data
from .wire import RpcError, decode_json_args, decode_query_args

MAX_BODY_BYTES = 10 * 1024 * 1024
JSON_ONLY = (
    "this simulator speaks JSON only (protobuf is not implemented): send "
    "Content-Type: application/json, use GET, or add ?json to the URL"
)
SIMULATED_FAILURE = "simulated fault: quote generation failed"
RECORD_LIMIT = 10_000

Fault = Literal["none", "fail", "stall", "wrong-report-data"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RpcHandler = Callable[[web.Request, dict[str, bytes]], Awaitable[web.Response]]


class SimulatedFailure(Exception):
    """An injected quote failure (answered with HTTP 500)."""


@dataclass(frozen=True, slots=True)
class QuoteResult:
    """A quote and the (padded) report_data the caller asked for, which it may not carry."""

    quote: bytes
    report_data: bytes
    fault: Fault


class Quoter:
    """Quotes one at a time, like the agent's QUOTE_LOCK, with latency and injected faults.

    One uniform draw per request picks its fate: below fail_rate it fails, below
    fail_rate + stall_rate it stalls, below that plus wrong_report_data_rate the quote carries
    other report_data; the RNG is seeded, so a sequence of requests replays identically.
    `record` lists ("enter"|"exit", call number) as quotes pass through the lock.
    """

    def __init__(self, cvm: SimulatedCvm, settings: SimulatorSettings) -> None:
        self.cvm = cvm
        self.latency = settings.quote_latency_ms / 1000
        self.stall_seconds = settings.stall_seconds
        self.thresholds = (
            settings.fail_rate,
            settings.fail_rate + settings.stall_rate,
            settings.fail_rate + settings.stall_rate + settings.wrong_report_data_rate,
        )
        # fault injection only; nothing secret depends on this generator
        self.rng = random.Random(hashlib.sha256(b"faults\0" + settings.seed.encode()).digest())  # noqa: S311
        self.lock = asyncio.Lock()
        self.calls = 0
        self.record: deque[tuple[str, int]] = deque(maxlen=RECORD_LIMIT)

    def draw_fault(self) -> Fault:
        """The fate of the next request, from the seeded generator."""
        draw = self.rng.random()
        fail, stall, wrong = self.thresholds
        if draw < fail:
            return "fail"
        if draw < stall:
            return "stall"
        if draw < wrong:
            return "wrong-report-data"
        return "none"

    async def quote(self, report_data: bytes) -> QuoteResult:
        """Quote `report_data` (padded); SimulatedFailure or a long stall when a fault is drawn."""
        padded = pad_report_data(report_data)
        fault = self.draw_fault()
        self.calls += 1
        call = self.calls
        async with self.lock:
            self.record.append(("enter", call))
            try:
                if self.latency:
                    await asyncio.sleep(self.latency)
                if fault == "fail":
                    raise SimulatedFailure(SIMULATED_FAILURE)
                quoted = padded
                if fault == "wrong-report-data":
                    quoted = hashlib.sha512(b"not what was asked\0" + padded).digest()
                quote = self.cvm.quote(quoted)
            finally:
                self.record.append(("exit", call))
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            raise SimulatedFailure(SIMULATED_FAILURE)
        return QuoteResult(quote=quote, report_data=padded, fault=fault)


CVM = web.AppKey("cvm", SimulatedCvm)
QUOTER = web.AppKey("quoter", Quoter)
DCAP = web.AppKey("dcap", MockDcap)
EVENT_LOG = web.AppKey("event_log", str)
INFO_BODY = web.AppKey("info_body", bytes)
VERSION_BODY = web.AppKey("version_body", bytes)
LOG_FIELDS = web.RequestKey("log_fields", dict[str, Any])
log = structlog.get_logger("simulator")


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(message: str, status: int = 400) -> web.Response:
    """Upstream's error shape: `{"error": …}` pretty-printed with a 2-space indent."""
    return _json(orjson.dumps({"error": message}, option=orjson.OPT_INDENT_2), status)


def is_json_mode(request: web.Request) -> bool:
    """JSON iff GET (or HEAD), `json` in the query string, or a JSON content type."""
    return (
        request.method in ("GET", "HEAD")
        or "json" in request.query
        or request.content_type == "application/json"
    )


async def _get_quote(request: web.Request, args: dict[str, bytes]) -> web.Response:
    app = request.app
    try:
        result = await app[QUOTER].quote(args.get("report_data", b""))
    except SimulatedFailure as exc:
        request[LOG_FIELDS]["fault"] = "fail"
        return error_response(str(exc), 500)
    if result.fault != "none":
        request[LOG_FIELDS]["fault"] = result.fault
    body = {
        "quote": result.quote.hex(),
        "event_log": app[EVENT_LOG],
        "report_data": result.report_data.hex(),
        "vm_config": app[CVM].vm_config,
    }
    return _json(orjson.dumps(body))


async def _info(request: web.Request, args: dict[str, bytes]) -> web.Response:
    return _json(request.app[INFO_BODY])


async def _version(request: web.Request, args: dict[str, bytes]) -> web.Response:
    return _json(request.app[VERSION_BODY])


# method -> (request struct name, its hex fields, handler); Info and Version take no arguments
RPCS: dict[str, tuple[str, tuple[str, ...], RpcHandler]] = {
    "GetQuote": ("RawQuoteArgs", ("report_data",), _get_quote),
    "Info": ("Empty", (), _info),
    "Version": ("Empty", (), _version),
}


async def rpc(request: web.Request) -> web.StreamResponse:
    """Dispatch `/<Method>` by GET or POST, decoding arguments as the agent does."""
    if request.method not in ("GET", "HEAD", "POST"):
        raise web.HTTPNotFound()
    if not is_json_mode(request):
        return error_response(JSON_ONLY)
    method = request.match_info["method"]
    if method not in RPCS:
        return error_response(f"Service not found: {method}")
    struct_name, fields, handler = RPCS[method]
    try:
        if request.method == "POST":
            args = decode_json_args(await request.read(), struct_name, fields)
        else:
            args = decode_query_args(request.query, fields)
        return await handler(request, args)
    except RpcError as exc:
        return error_response(exc.message)


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line per request: method, path, status, duration_ms, request_id when given."""
    started = time.perf_counter()
    request[LOG_FIELDS] = {}
    inbound = request.headers.get("X-Request-ID", "")
    if WELL_FORMED_REQUEST_ID.fullmatch(inbound):
        request[LOG_FIELDS]["request_id"] = inbound
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    except Exception:
        log.exception("unhandled_error", path=request.path)
        response = error_response("internal error", 500)
    fields: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "status": response.status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    notes: dict[str, Any] = request[LOG_FIELDS]
    fields.update(notes)
    log_request(log, fields)
    if isinstance(response, web.HTTPException):
        raise response
    return response


def create_app(settings: SimulatorSettings, *, now: datetime | None = None) -> web.Application:
    """Build the simulated CVM (once) and the agent app; `now` dates the mock DCAP collateral."""
    dcap = MockDcap(settings.seed, now or datetime.now(UTC), settings.dcap)
    cvm = build_cvm(settings.app_compose, settings.seed, dcap.signer, settings.variant)
    app = web.Application(middlewares=[log_requests], client_max_size=MAX_BODY_BYTES)
    app[DCAP] = dcap
    app[CVM] = cvm
    app[QUOTER] = Quoter(cvm, settings)
    app[EVENT_LOG] = cvm.event_log(settings.event_log)
    app[INFO_BODY] = orjson.dumps(cvm.info())
    app[VERSION_BODY] = orjson.dumps(
        {"version": f"{package_version('oauth3-simulator')}-simulator", "rev": ""}
    )
    app.router.add_route("*", "/{method}", rpc)
    return app
