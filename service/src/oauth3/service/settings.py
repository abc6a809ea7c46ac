"""Service configuration: OAUTH3_* variables, each declared once here, read into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from oauth3.runtime.env_settings import (
    ConfigError,
    Setting,
    env_field,
    integer,
    nested,
    number,
    read_settings,
    text,
)
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.logs import LOG_LEVEL
from oauth3.runtime.serve import Limits
from oauth3.runtime.sidecar_protocol import QUEUE_SIZE, SOCKET, quotes_held


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


BUILD_INFO: Setting[dict[str, Any] | None] = Setting(
    "OAUTH3_BUILD_INFO", None, "a JSON object without floats, served in /info", parse_build_info
)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Everything the service needs; build with `from_env`."""

    host: str = env_field(text("OAUTH3_HOST", "127.0.0.1", "address of the API"))
    port: int = env_field(integer("OAUTH3_PORT", 8080, 0, 65535, "TCP port of the API"))
    sidecar_socket: Path = env_field(SOCKET)
    sidecar_queue_size: int = env_field(QUEUE_SIZE)
    quote_timeout: float = env_field(
        number(
            "OAUTH3_QUOTE_TIMEOUT",
            15.0,
            0.01,
            600,
            "seconds one quote may take through the sidecar",
        )
    )
    ready_timeout: float = env_field(
        number("OAUTH3_READY_TIMEOUT", 2.0, 0.01, 60, "seconds /readyz and the metrics scrape wait")
    )
    cache_refresh_interval: float = env_field(
        number("OAUTH3_CACHE_REFRESH_INTERVAL", 60.0, 0.05, 86_400, "seconds between cached quotes")
    )
    cache_max_age: float = env_field(
        number(
            "OAUTH3_CACHE_MAX_AGE", 300.0, 0.05, 7 * 86_400, "seconds a cached quote may be served"
        )
    )
    retry_after: int = env_field(
        integer("OAUTH3_RETRY_AFTER", 1, 1, 3600, "Retry-After of a 503 or 504, in seconds")
    )
    shutdown_timeout: float = env_field(
        number(
            "OAUTH3_SHUTDOWN_TIMEOUT", 10.0, 0, 600, "seconds in-flight requests get at shutdown"
        )
    )
    build_info: dict[str, Any] | None = env_field(BUILD_INFO)
    log_level: str = env_field(LOG_LEVEL)
    log_buffering: Buffering = nested(Buffering, "OAUTH3_")
    metrics_host: str = env_field(text("OAUTH3_METRICS_HOST", "127.0.0.1", "address of /metrics"))
    metrics_port: int = env_field(
        integer("OAUTH3_METRICS_PORT", 9464, 0, 65535, "TCP port of /metrics (0: none)")
    )
    limits: Limits = nested(Limits, "OAUTH3_")
    max_batch: int = env_field(
        integer("OAUTH3_MAX_BATCH", 4096, 1, 1 << 20, "distinct nonces in one oauth3/v2 quote")
    )
    batch_wait: float = env_field(
        number(
            "OAUTH3_BATCH_WAIT", 30.0, 0.01, 600, "seconds a batch waits for its quote (then 504)"
        )
    )

    def __post_init__(self) -> None:
        if self.cache_max_age < self.cache_refresh_interval:
            raise ConfigError(
                "OAUTH3_CACHE_MAX_AGE must be at least OAUTH3_CACHE_REFRESH_INTERVAL "
                f"({self.cache_max_age:g} < {self.cache_refresh_interval:g})"
            )

    @property
    def max_pending_quotes(self) -> int:
        """Distinct fresh quotes in flight beyond which the service answers 503 itself: as many
        as the sidecar holds, so a request it would refuse never makes the round trip."""
        return quotes_held(self.sidecar_queue_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read OAUTH3_* variables; ConfigError names the first invalid one."""
        return read_settings(cls, os.environ if env is None else env)
