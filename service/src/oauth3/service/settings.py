"""Service configuration: OAUTH3_* variables read once into a frozen, validated object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from oauth3.runtime.envconfig import ConfigError, integer, limits, log_buffering, log_level, number
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.serve import Limits
from oauth3.runtime.sidecar_protocol import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SOCKET,
    MAX_QUEUE_SIZE,
    QUEUE_SIZE_ENV,
    SOCKET_ENV,
    quotes_held,
)

DEFAULT_METRICS_PORT = 9464


def _check_json_value(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise ConfigError(f"OAUTH3_BUILD_INFO: {where} is a float; /info carries no floats")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")


def parse_build_info(raw: str | None) -> dict[str, Any] | None:
    """OAUTH3_BUILD_INFO: unset/empty/`null` -> None, else a JSON object without floats."""
    if raw is None or raw.strip() in ("", "null"):
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(
            'OAUTH3_BUILD_INFO must be a JSON object, e.g. {"git_commit":"…"}'
        ) from None
    if not isinstance(value, dict):
        raise ConfigError('OAUTH3_BUILD_INFO must be a JSON object, e.g. {"git_commit":"…"}')
    _check_json_value(value, "build_info")
    return value


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Everything the service needs; build with `from_env`."""

    host: str = "127.0.0.1"
    port: int = 8080
    sidecar_socket: Path = DEFAULT_SOCKET
    quote_timeout: float = 15.0
    ready_timeout: float = 2.0
    cache_refresh_interval: float = 60.0
    cache_max_age: float = 300.0
    retry_after: int = 1
    shutdown_timeout: float = 10.0
    build_info: dict[str, Any] | None = None
    log_level: str = "info"
    log_buffering: Buffering = field(default_factory=Buffering)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # off unless asked for; from_env defaults to DEFAULT_METRICS_PORT
    limits: Limits = field(default_factory=Limits)
    sidecar_queue_size: int = DEFAULT_QUEUE_SIZE  # the sidecar's, read from the same variable
    max_batch: int = 4096  # distinct nonces in one oauth3/v2 quote
    batch_wait: float = 30.0  # a batch's wait for its quote, from its first nonce (then 504)

    @property
    def max_pending_quotes(self) -> int:
        """Distinct fresh quotes in flight beyond which the service answers 503 itself: as many
        as the sidecar holds, so a request it would refuse never makes the round trip."""
        return quotes_held(self.sidecar_queue_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read OAUTH3_* variables; ConfigError names the first invalid one."""
        env = os.environ if env is None else env
        refresh = number(env, "OAUTH3_CACHE_REFRESH_INTERVAL", 60.0, 0.05, 86_400)
        max_age = number(env, "OAUTH3_CACHE_MAX_AGE", 300.0, 0.05, 7 * 86_400)
        if max_age < refresh:
            raise ConfigError(
                "OAUTH3_CACHE_MAX_AGE must be at least OAUTH3_CACHE_REFRESH_INTERVAL "
                f"({max_age:g} < {refresh:g})"
            )
        return cls(
            host=env.get("OAUTH3_HOST", "127.0.0.1"),
            port=integer(env, "OAUTH3_PORT", 8080, 0, 65535),
            sidecar_socket=Path(env.get(SOCKET_ENV) or DEFAULT_SOCKET),
            quote_timeout=number(env, "OAUTH3_QUOTE_TIMEOUT", 15.0, 0.01, 600),
            ready_timeout=number(env, "OAUTH3_READY_TIMEOUT", 2.0, 0.01, 60),
            cache_refresh_interval=refresh,
            cache_max_age=max_age,
            retry_after=integer(env, "OAUTH3_RETRY_AFTER", 1, 1, 3600),
            shutdown_timeout=number(env, "OAUTH3_SHUTDOWN_TIMEOUT", 10.0, 0, 600),
            build_info=parse_build_info(env.get("OAUTH3_BUILD_INFO")),
            log_level=log_level(env),
            log_buffering=log_buffering(env),
            limits=limits(env, "OAUTH3_"),
            sidecar_queue_size=integer(env, QUEUE_SIZE_ENV, DEFAULT_QUEUE_SIZE, 1, MAX_QUEUE_SIZE),
            max_batch=integer(env, "OAUTH3_MAX_BATCH", 4096, 1, 1 << 20),
            batch_wait=number(env, "OAUTH3_BATCH_WAIT", 30.0, 0.01, 600),
            metrics_host=env.get("OAUTH3_METRICS_HOST", "127.0.0.1"),
            metrics_port=integer(env, "OAUTH3_METRICS_PORT", DEFAULT_METRICS_PORT, 0, 65535),
        )
