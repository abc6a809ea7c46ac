"""Run an aiohttp app on TCP or a unix socket until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from .env_settings import env_field, integer, number
from .logs import flush_logs

log = structlog.get_logger("serve")
SOCKET_GUARD_INTERVAL_S = 1.0
_REFUSAL_BODY = orjson.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "too many open connections",
    }
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_REFUSAL_BODY)}\r\n\r\n".encode()
    + _REFUSAL_BODY
)


class SocketInUseError(RuntimeError):
    """The unix socket path is held by a live server, or is not a socket at all."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection-level limits: idle/slow-client timeout, header sizes, open connections."""

    keepalive_timeout: float = env_field(
        number(
            "KEEPALIVE_TIMEOUT",
            15.0,
            0.1,
            3600,
            "seconds an idle or slow client's connection stays open",
        )
    )
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    max_connections: int = env_field(
        integer(
            "MAX_CONNECTIONS", 1024, 1, 100_000, "open connections beyond which new ones are closed"
        )
    )


def prepare_socket_path(path: Path) -> None:
    """Make `path` bindable: remove a stale socket file, refuse a live one or a non-socket file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUseError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketInUseError(f"cannot probe {path}: {exc.strerror}") from None
        path.unlink(missing_ok=True)  # stale: nobody listens on it any more
        return
    finally:
        probe.close()
    raise SocketInUseError(f"{path} is in use by a running server")


def _limit_connections(server: web.Server, limit: int) -> None:
    """Answer connections beyond `limit` with a bare 503 and close them."""
    accept = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        if len(server.connections) >= limit:
            transport.write(_REFUSAL)
            transport.close()
            return
        accept(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


async def _bind_unix(runner: web.AppRunner, path: Path, mode: int) -> tuple[web.UnixSite, int]:
    prepare_socket_path(path)
    old_umask = os.umask(0o777 & ~mode)
    try:
        site = web.UnixSite(runner, str(path))
        await site.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return site, os.lstat(path).st_ino


async def _guard_socket(
    runner: web.AppRunner, site: web.UnixSite, inode: int, path: Path, mode: int
) -> None:
    """Re-create our socket file if someone deletes or replaces it, so no restart is needed."""
    while True:
        await asyncio.sleep(SOCKET_GUARD_INTERVAL_S)
        try:
            current = os.lstat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == inode:
            continue
        log.warning("socket_file_lost", path=str(path), action="rebinding")
        await site.stop()
        try:
            site, inode = await _bind_unix(runner, path, mode)
        except (OSError, SocketInUseError) as exc:
            log.error("socket_rebind_failed", path=str(path), error=str(exc))
            raise


async def serve(
    app: web.Application,
    *,
    host: str | None = None,
    port: int | None = None,
    unix_path: Path | None = None,
    socket_mode: int = 0o660,
    shutdown_timeout: float = 10.0,
    limits: Limits | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set, when given, e.g. by a test); in-flight
    requests get `shutdown_timeout` seconds to finish."""
    limits = limits or Limits()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        app,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    assert runner.server is not None
    _limit_connections(runner.server, limits.max_connections)
    guard: asyncio.Task[None] | None = None
    try:
        if unix_path is not None:
            site, inode = await _bind_unix(runner, unix_path, socket_mode)
            guard = asyncio.create_task(_guard_socket(runner, site, inode, unix_path, socket_mode))
        else:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        if guard is not None:
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, SocketInUseError):
                await guard
        await runner.cleanup()
        if unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_path)
        for sig in signals:
            loop.remove_signal_handler(sig)
        flush_logs()
