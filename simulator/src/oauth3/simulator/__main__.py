"""`oauth3-simulator`: serve a simulated dstack guest agent on a unix socket until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from oauth3.runtime.cli import OneLineParser, fail
from oauth3.runtime.env_settings import ConfigError
from oauth3.runtime.logs import configure_logging, secrets_from_env
from oauth3.runtime.serve import SocketInUseError, prepare_socket_path, serve

from .app import CVM, DCAP, create_app
from .pccs import create_pccs_app
from .settings import SimulatorSettings, from_args, parser

PROG = "oauth3-simulator"
SHUTDOWN_TIMEOUT = 1.0


def healthcheck(path: Path, timeout: float = 3.0) -> bool:
    """True when something answers GET /Version on the socket with HTTP 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"GET /Version HTTP/1.0\r\nHost: dstack\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


async def _run(app: web.Application, settings: SimulatorSettings) -> None:
    pccs: web.AppRunner | None = None
    if settings.pccs_port:
        pccs = web.AppRunner(create_pccs_app(app[DCAP]), access_log=None)
        await pccs.setup()
        await web.TCPSite(pccs, "127.0.0.1", settings.pccs_port).start()
    try:
        await serve(
            app,
            unix_path=settings.socket,
            socket_mode=settings.socket_mode,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
    finally:
        if pccs is not None:
            await pccs.cleanup()


def _log_start(log: Any, app: web.Application, settings: SimulatorSettings) -> None:
    """One `starting` line: what this simulated CVM measures and which faults it plays."""
    cvm = app[CVM]
    log.info(
        "starting",
        socket=str(settings.socket),
        app_compose=settings.app_compose_source,
        app_name=cvm.app_name,
        compose_hash=cvm.compose_hash.hex(),
        app_id=cvm.app_id.hex(),
        instance_id=cvm.instance_id.hex(),
        mr_td=cvm.mr_td.hex(),
        event_log=settings.event_log,
        quote_latency_ms=settings.quote_latency_ms,
        fail_rate=settings.fail_rate,
        stall_rate=settings.stall_rate,
        wrong_report_data_rate=settings.wrong_report_data_rate,
        dcap_dir=str(settings.dcap_dir) if settings.dcap_dir else None,
        pccs_port=settings.pccs_port or None,
        attacks=sorted(settings.variant.attacks) or None,
        emitted_events=[name for name, _ in settings.variant.emitted] or None,
        runtime_event_version=settings.variant.runtime_event_version,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-simulator` (options override OAUTH3_SIM_* variables)."""
    args = parser(PROG, OneLineParser).parse_args(argv)
    try:
        settings = from_args(args, os.environ)
    except ConfigError as exc:
        fail(f"{PROG}: {exc}")
    if args.healthcheck:
        raise SystemExit(0 if healthcheck(settings.socket) else 1)
    try:
        app = create_app(settings)
    except ValueError as exc:
        fail(f"{PROG}: {settings.app_compose_source}: {exc}")
    try:
        prepare_socket_path(settings.socket)
    except SocketInUseError as exc:
        fail(f"{PROG}: {exc}", 1)
    configure_logging(
        settings.log_level,
        buffering=settings.log_buffering,
        secrets=secrets_from_env(os.environ),
    )
    log = structlog.get_logger("simulator")
    dcap = app[DCAP]
    if settings.dcap_dir is not None:
        try:
            dcap.write_files(settings.dcap_dir)
        except OSError as exc:
            log.error(
                "cannot_write_dcap_files",
                path=str(settings.dcap_dir),
                error=exc.strerror or str(exc),
            )
            raise SystemExit(1) from None
    _log_start(log, app, settings)
    try:
        asyncio.run(_run(app, settings))
    except (SocketInUseError, OSError) as exc:
        error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error("cannot_listen", error=error)
        raise SystemExit(1) from None
    log.info("stopped")


if __name__ == "__main__":
    main()
