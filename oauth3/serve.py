"""Run an aiohttp app on TCP or a unix socket until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
from pathlib import Path

from aiohttp import web


class SocketInUseError(RuntimeError):
    """The unix socket path is held by a live server, or is not a socket at all."""


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


async def serve(
    app: web.Application,
    *,
    host: str | None = None,
    port: int | None = None,
    unix_path: Path | None = None,
    socket_mode: int = 0o660,
    shutdown_timeout: float = 10.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get `shutdown_timeout` seconds to finish."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    try:
        site: web.BaseSite
        if unix_path is not None:
            prepare_socket_path(unix_path)
            old_umask = os.umask(0o777 & ~socket_mode)
            try:
                site = web.UnixSite(runner, str(unix_path))
                await site.start()
            finally:
                os.umask(old_umask)
            os.chmod(unix_path, socket_mode)
        else:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()
        if unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_path)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
