"""Request bookkeeping shared by the service and the sidecar: request ids, problem+json, one log
line and metrics per request."""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiohttp import web

from .logs import log_request, request_id_var
from .problem import Problem, from_problem, problem_response

REQUEST_ID_HEADER = "X-Request-ID"
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


def _error_response(exc: web.HTTPException, error_member: bool) -> web.Response:
    default_text = not exc.text or exc.text.startswith(f"{exc.status}:")
    detail = exc.reason if default_text or exc.status >= 500 else str(exc.text)
    extra = {"error": detail} if error_member else None
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return problem_response(exc.status, detail, extra=extra, headers=headers)


class _EveryTarget(web.PlainResource):
    """A resource that matches every request target: indexed under "/", which the router
    tries last for any path, and also `*` (OPTIONS) and `host:port` (CONNECT), which no
    `/{tail:.*}` pattern matches."""

    def _match(self, path: str) -> dict[str, str] | None:
        return {}


async def answer_unmatched(request: web.Request) -> web.StreamResponse:
    """The catch-all route's handler: 405 when another route serves this path with other
    methods, else 404, as aiohttp's router would answer them, but as problem+json."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound


class RequestBookkeeping:
    """What every request of a server gets, applied by wrapping each route's handler: a request
    id (echoed in X-Request-ID), problem+json for every error, one canonical log line, and
    `observe(route, status, seconds)` (metrics) once per answered request.

    A wrapper rather than an aiohttp middleware: any middleware makes aiohttp build and walk a
    handler chain on every request (about 6 us of CPU each on our 2-core VM).
    `error_member` also puts the detail under "error", the member dstack clients read;
    `refuse_get_bodies` answers 400 to a GET or HEAD that carries a body.
    """

    def __init__(
        self,
        component: str,
        *,
        error_member: bool = False,
        observe: Callable[[str, int, float], None] | None = None,
        refuse_get_bodies: bool = False,
    ) -> None:
        self._log = structlog.get_logger(component)
        self._error_member = error_member
        self._observe = observe
        self._refuse_get_bodies = refuse_get_bodies
        self._wrapped: set[Handler] = set()

    def add_routes(
        self,
        app: web.Application,
        routes: Iterable[web.RouteDef],
        *,
        otherwise: Handler = answer_unmatched,
    ) -> None:
        """Register `routes` with their handlers wrapped (labelled by canonical path), then
        `otherwise` for every other path and method (labelled `unmatched`); the app then
        refuses to start while any of its routes lacks the bookkeeping."""
        for route in routes:
            label = app.router.add_resource(route.path).canonical
            handler = self.wrap(route.handler, label)
            web.RouteDef(route.method, route.path, handler, route.kwargs).register(app.router)
        every_target = _EveryTarget("/")
        app.router.register_resource(every_target)
        every_target.add_route("*", self.wrap(otherwise, "unmatched"))
        app.on_startup.insert(0, self._refuse_unwrapped)  # before cleanup_ctx opens anything

    async def _refuse_unwrapped(self, app: web.Application) -> None:
        for route in app.router.routes():
            if route.handler not in self._wrapped:
                raise RuntimeError(f"route {route.method} {route.resource} lacks bookkeeping")

    def wrap(self, handler: Handler, route: str) -> Handler:
        """`handler` with the bookkeeping around it; `route` labels its lines and metrics."""
        log = self._log
        error_member = self._error_member
        observe = self._observe
        refuse_get_bodies = self._refuse_get_bodies

        async def bookkept(request: web.Request) -> web.StreamResponse:
            request_id = request_id_for(request)
            request[REQUEST_ID] = request_id
            notes: dict[str, Any] = {}
            request[LOG_FIELDS] = notes
            started = time.perf_counter()
            bound = request_id_var.set(request_id)
            try:
                response: web.StreamResponse
                try:
                    if (
                        refuse_get_bodies
                        and request.body_exists
                        and request.method in ("GET", "HEAD")
                    ):
                        raise Problem(400, f"{request.method} requests take no body")
                    response = await handler(request)
                except Problem as problem:
                    if error_member:
                        problem.extra.setdefault("error", problem.detail)
                    response = from_problem(problem)
                except web.HTTPException as exc:
                    if exc.status < 400:
                        raise
                    response = _error_response(exc, error_member)
                except Exception:
                    log.exception("unhandled_error", path=request.path)
                    extra = {"error": "internal error"} if error_member else None
                    response = problem_response(500, "internal error", extra=extra)
                response.headers[REQUEST_ID_HEADER] = request_id
                duration = time.perf_counter() - started
                status = response.status
                if observe is not None:
                    observe(route, status, duration)
                fields = {
                    "request_id": request_id,
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": int(duration * 1_000_000 + 0.5) / 1000,  # round() costs 2x
                }
                if notes:
                    fields.update(notes)
                log_request(log, fields)
                return response
            finally:
                request_id_var.reset(bound)

        functools.update_wrapper(bookkept, handler)
        self._wrapped.add(bookkept)
        return bookkept
