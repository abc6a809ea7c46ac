"""`oauth3-sidecar`: serve the dstack protocol subset on its own socket; `healthcheck` probes it."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

from oauth3.runtime.cli import OneLineParser, fail
from oauth3.runtime.env_settings import ConfigError
from oauth3.runtime.logs import configure_logging, secrets_from_env
from oauth3.runtime.serve import SocketInUseError, serve

from .app import create_app
from .settings import SidecarSettings


def healthcheck(settings: SidecarSettings, timeout: float = 3.0) -> bool:
    """True when the sidecar answers GET /healthz with 200 on its socket (no curl needed)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(settings.socket))
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: sidecar\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.1 200") or status_line.startswith(b"HTTP/1.0 200")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-sidecar` (configuration from OAUTH3_SIDECAR_* variables)."""
    parser = OneLineParser(
        prog="oauth3-sidecar",
        description="Hold the dstack socket; forward only GetQuote and Info.",
    )
    parser.add_argument("command", nargs="?", choices=["serve", "healthcheck"], default="serve")
    args = parser.parse_args(argv)
    try:
        settings = SidecarSettings.from_env()
    except ConfigError as exc:
        fail(f"oauth3-sidecar: {exc}")
    if args.command == "healthcheck":
        raise SystemExit(0 if healthcheck(settings) else 1)
    configure_logging(
        settings.log_level,
        buffering=settings.log_buffering,
        secrets=secrets_from_env(os.environ),
    )
    log = structlog.get_logger("sidecar")
    log.info("starting", socket=str(settings.socket), agent_socket=str(settings.agent_socket))
    try:
        asyncio.run(
            serve(
                create_app(settings),
                unix_path=settings.socket,
                socket_mode=settings.socket_mode,
                limits=settings.limits,
            )
        )
    except SocketInUseError as exc:
        log.error("cannot_listen", address=str(settings.socket), error=str(exc))
        raise SystemExit(1) from None
    except OSError as exc:
        log.error("cannot_listen", address=str(settings.socket), error=exc.strerror or str(exc))
        raise SystemExit(1) from None
    log.info("stopped")


if __name__ == "__main__":
    main()
