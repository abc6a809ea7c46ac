"""Middleware shared by the service and the sidecar: request ids, problem+json, one log line."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from .logs import log_request, request_id_var
from .problem import Problem, from_problem, problem_response

REQUEST_ID_HEADER = "X-Request-ID"
# how long the sidecar held a quote request in its queue and in the agent (ms)
QUEUE_MS_HEADER = "X-Oauth3-Queue-Ms"
AGENT_MS_HEADER = "X-Oauth3-Agent-Ms"
LOG_FIELDS = web.RequestKey("oauth3_log_fields", dict[str, Any])
REQUEST_ID = web.RequestKey("oauth3_request_id", str)
WELL_FORMED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RandomIds:
    """128-bit random ids as 32 hex digits, from the OS's CSPRNG in blocks (one getrandom(2)
    per 256 ids rather than one per request)."""

    _BLOCK = 16 * 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        """A fresh id."""
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self._BLOCK), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


new_request_id = RandomIds()


def request_id_for(request: web.Request) -> str:
    """The inbound X-Request-ID when well-formed, else a fresh random id."""
    inbound = request.headers.get(REQUEST_ID_HEADER)
    if inbound and WELL_FORMED_REQUEST_ID.fullmatch(inbound):
        return inbound
    return new_request_id()


def note(request: web.Request, **fields: Any) -> None:
    """Add fields to this request's canonical log line."""
    request[LOG_FIELDS].update(fields)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def request_middleware(
    component: str,
    *,
    error_member: bool = False,
    observe: Callable[[str, int, float], None] | None = None,
    refuse_get_bodies: bool = False,
) -> Any:
    """Middleware: bind a request id, turn every error into problem+json, log one line per request.

    `error_member` also puts the detail under "error", the member dstack clients read;
    `observe(route, status, seconds)` is called once per answered request (metrics);
    `refuse_get_bodies` answers 400 to a GET or HEAD that carries a body.
    """
    log = structlog.get_logger(component)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_id_for(request)
        request[REQUEST_ID] = request_id
        notes: dict[str, Any] = {}
        request[LOG_FIELDS] = notes
        started = time.perf_counter()
        bound = request_id_var.set(request_id)
        try:
            response: web.StreamResponse
            try:
                if refuse_get_bodies and request.method in ("GET", "HEAD") and request.body_exists:
                    raise Problem(400, f"{request.method} requests take no body")
                response = await handler(request)
            except Problem as problem:
                if error_member:
                    problem.extra.setdefault("error", problem.detail)
                response = from_problem(problem)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                default_text = not exc.text or exc.text.startswith(f"{exc.status}:")
                detail = exc.reason if default_text or exc.status >= 500 else str(exc.text)
                extra = {"error": detail} if error_member else None
                headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                response = problem_response(exc.status, detail, extra=extra, headers=headers)
            except Exception:
                log.exception("unhandled_error", path=request.path)
                extra = {"error": "internal error"} if error_member else None
                response = problem_response(500, "internal error", extra=extra)
            response.headers[REQUEST_ID_HEADER] = request_id
            duration = time.perf_counter() - started
            route = _route_name(request)
            if observe is not None:
                observe(route, response.status, duration)
            fields = {
                "request_id": request_id,
                "method": request.method,
                "route": route,
                "status": response.status,
                "duration_ms": round(duration * 1000, 3),
            }
            if notes:
                fields.update(notes)
            log_request(log, fields)
            return response
        finally:
            request_id_var.reset(bound)

    return middleware
