"""Test doubles that are real servers: a fake guest agent on a unix socket, and serving helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from oauth3.service.settings import ServiceSettings
from oauth3.sidecar.app import create_app as create_sidecar
from oauth3.sidecar.settings import SidecarSettings
from oauth3.simulator.mockdcap import MockDcap
from oauth3.simulator.quote import build_quote, td_report_body


@cache
def _dcap() -> MockDcap:
    return MockDcap(b"fake-agent", datetime.now(UTC))


def signed_quote(report_data: bytes) -> bytes:
    """A structurally real, mock-signed TDX v4 quote carrying `report_data`."""
    body = td_report_body(
        mr_td=bytes(48), rtmrs=[bytes(48)] * 4, mr_config_id=bytes(48), report_data=report_data
    )
    return build_quote(body, _dcap().signer)


def short_socket_dir() -> Path:
    """A fresh short directory for unix sockets (AF_UNIX paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="o3", dir="/tmp"))


class FakeAgent:
    """A guest agent whose behaviour a test sets: ok, stall, garbage, truncated, wrong_report_data,
    400, 500, redirect (307 to /GetKey), drop (connection closed mid-answer), bytes:N (N bytes)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.calls: list[tuple[str, str, bytes, str | None]] = []
        self.active = 0
        self.max_active = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{method}", self._handle)

    def quote_calls(self) -> int:
        """How many GetQuote requests reached the agent."""
        return sum(1 for method, *_ in self.calls if method == "GetQuote")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body = await request.read()
        self.calls.append((method, request.method, body, request.headers.get("X-Request-ID")))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.mode == "stall":
                await asyncio.sleep(3600)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "drop":
                return await self._drop_mid_answer(request)
            if self.mode.startswith("bytes:"):  # an answer of exactly this many bytes
                return web.Response(body=b"x" * int(self.mode[6:]), content_type="text/plain")
            return await self._answer(method, body)
        finally:
            self.active -= 1

    async def _drop_mid_answer(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b'{"quote": "0400')
        assert request.transport is not None
        request.transport.close()
        return response

    async def _answer(self, method: str, body: bytes) -> web.StreamResponse:
        if self.mode == "redirect":
            raise web.HTTPTemporaryRedirect("/GetKey")
        if self.mode == "500":
            return web.Response(status=500, text="agent exploded: secret-internal-detail")
        if self.mode == "400":
            return web.json_response({"error": "secret-internal-detail"}, status=400)
        if self.mode == "garbage":
            return web.Response(body=b"{not json", content_type="application/json")
        if method == "Info":
            return web.json_response({"app_id": "00" * 20, "tcb_info": "{}"})
        if method != "GetQuote":
            return web.json_response({"error": f"Service not found: {method}"}, status=400)
        requested = bytes.fromhex(
            orjson.loads(body or b"{}").get("report_data", "").removeprefix("0x")
        )
        report_data = requested.ljust(64, b"\0")
        quoted = report_data
        if self.mode == "wrong_report_data":
            quoted = bytes([report_data[0] ^ 1]) + report_data[1:]
        quote = signed_quote(quoted)
        if self.mode == "truncated":
            quote = quote[:700]
        answer = {
            "quote": quote.hex(),
            "event_log": "[]",
            "report_data": report_data.hex(),
            "vm_config": "{}",
        }
        return web.json_response(answer)


@asynccontextmanager
async def serve_unix(app: web.Application, path: Path) -> AsyncIterator[web.AppRunner]:
    """Serve `app` on a unix socket for the duration of the block."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        yield runner
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@asynccontextmanager
async def unix_session(path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose every request goes to the unix socket at `path`."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
        yield session


def problem(body: bytes) -> dict[str, Any]:
    """Decode a problem+json body and check it has the four RFC 9457 members."""
    doc: dict[str, Any] = orjson.loads(body)
    assert {"type", "title", "status", "detail"} <= set(doc), doc
    return doc


class Harness:
    """Fake agent + real sidecar app on unix sockets; the sidecar can be stopped and started."""

    def __init__(self, directory: Path, queue_size: int = 2) -> None:
        self.agent = FakeAgent()
        self.sidecar_settings = SidecarSettings(
            socket=directory / "sidecar.sock",
            agent_socket=directory / "dstack.sock",
            queue_size=queue_size,
            quote_timeout=0.5,
        )
        self.stack = AsyncExitStack()
        self.sidecar_stack: AsyncExitStack | None = None

    async def start(self) -> None:
        await self.stack.enter_async_context(
            serve_unix(self.agent.app, self.sidecar_settings.agent_socket)
        )
        await self.start_sidecar()

    async def start_sidecar(self) -> None:
        self.sidecar_stack = AsyncExitStack()
        await self.sidecar_stack.enter_async_context(
            serve_unix(create_sidecar(self.sidecar_settings), self.sidecar_settings.socket)
        )

    async def stop_sidecar(self) -> None:
        assert self.sidecar_stack is not None
        await self.sidecar_stack.aclose()
        self.sidecar_stack = None

    async def close(self) -> None:
        if self.sidecar_stack is not None:
            await self.stop_sidecar()
        await self.stack.aclose()

    def service_settings(self, **overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "sidecar_socket": self.sidecar_settings.socket,
            "sidecar_queue_size": self.sidecar_settings.queue_size,
            "metrics_port": 0,
            "quote_timeout": 2.0,
            "ready_timeout": 0.5,
            "cache_refresh_interval": 60.0,
            "cache_max_age": 120.0,
        }
        values.update(overrides)
        return ServiceSettings(**values)
