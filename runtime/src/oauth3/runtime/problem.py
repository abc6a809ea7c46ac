"""RFC 9457 problem+json: the one error shape every oauth3 HTTP surface answers with."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise in a handler to answer with problem+json; `detail` must be safe to show clients."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_ = type_
        self.retry_after = retry_after
        self.extra = extra or {}


def problem_response(
    status: int,
    detail: str,
    *,
    type_: str = "about:blank",
    retry_after: int | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build a problem+json response (title from the status code's standard phrase)."""
    body: dict[str, Any] = {
        "type": type_,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=all_headers,
    )


def from_problem(problem: Problem) -> web.Response:
    """The response a raised Problem stands for."""
    return problem_response(
        problem.status,
        problem.detail,
        type_=problem.type_,
        retry_after=problem.retry_after,
        extra=problem.extra,
    )
