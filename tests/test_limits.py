"""Connection-level limits of every oauth3 server: header and URL sizes, bodies on GET, slow
clients, open connections, and a unix socket file that someone deletes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from oauth3.runtime.bookkeeping import RequestBookkeeping
from oauth3.runtime.serve import Limits, serve
from tests.fakes import short_socket_dir, unix_session
from tests.stack import free_port

LIMITS = Limits(
    keepalive_timeout=0.5,
    max_line_size=1024,
    max_field_size=1024,
    max_headers=16,
    max_connections=3,
)


def small_app() -> web.Application:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    bookkeeping = RequestBookkeeping("test", refuse_get_bodies=True)
    bookkeeping.add_routes(app, [web.get("/hello", hello)])
    return app


@asynccontextmanager
async def serving(**kwargs: object) -> AsyncIterator[None]:
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(small_app(), ready=ready, stop=stop, limits=LIMITS, **kwargs))  # type: ignore[arg-type]
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def raw_request(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.fixture
async def port() -> AsyncIterator[int]:
    chosen = free_port()
    async with serving(host="127.0.0.1", port=chosen):
        yield chosen


async def test_normal_request_passes(port: int) -> None:
    answer = await raw_request(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /hello?q=" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(40))
        + b"\r\n",
    ],
    ids=["long-url", "big-header", "many-headers"],
)
async def test_oversized_request_lines_and_headers_are_refused(port: int, payload: bytes) -> None:
    answer = await raw_request(port, payload)
    status = answer.split(b"\r\n", 1)[0]
    assert status.split()[1] in (b"400", b"414", b"431"), status


async def test_get_with_a_body_is_refused(port: int) -> None:
    answer = await raw_request(
        port,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"GET requests take no body" in answer
    assert b"application/problem+json" in answer


async def test_slow_client_is_disconnected(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hello HTTP/1.1\r\nHo")  # and then nothing more
    await writer.drain()
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed the connection
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()


async def test_connections_beyond_the_limit_get_503(port: int) -> None:
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    try:
        answer = await raw_request(port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 1" in answer
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.1)
    answer = await raw_request(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")


async def test_deleted_unix_socket_file_comes_back() -> None:
    path = short_socket_dir() / "guarded.sock"
    async with serving(unix_path=path, socket_mode=0o600):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        os.unlink(path)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await asyncio.to_thread(os.path.exists, path):
                break
        async with unix_session(path) as session, session.get("http://s/hello") as response:
            assert response.status == 200
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert not await asyncio.to_thread(os.path.exists, path)
