"""`oauth3-service`: run the public API (configuration from OAUTH3_* variables)."""

from __future__ import annotations

import asyncio
import os

import structlog

from oauth3.runtime.cli import OneLineParser, fail
from oauth3.runtime.env_settings import ConfigError
from oauth3.runtime.logs import configure_logging, secrets_from_env
from oauth3.runtime.serve import serve

from .app import create_app
from .settings import ServiceSettings


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-service`."""
    OneLineParser(
        prog="oauth3-service",
        description="Serve /info and /attestation; configure with OAUTH3_* variables.",
    ).parse_args(argv)
    try:
        settings = ServiceSettings.from_env()
    except ConfigError as exc:
        fail(f"oauth3-service: {exc}")
    configure_logging(
        settings.log_level,
        buffering=settings.log_buffering,
        secrets=secrets_from_env(os.environ),
    )
    log = structlog.get_logger("service")
    app = create_app(settings)
    log.info(
        "starting", host=settings.host, port=settings.port, sidecar=str(settings.sidecar_socket)
    )
    try:
        asyncio.run(
            serve(
                app,
                host=settings.host,
                port=settings.port,
                shutdown_timeout=settings.shutdown_timeout,
                limits=settings.limits,
            )
        )
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        log.error("cannot_listen", address=where, error=exc.strerror or str(exc))
        raise SystemExit(1) from None
    log.info("stopped")


if __name__ == "__main__":
    main()
