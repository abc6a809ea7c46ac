"""Reading typed values from environment variables; every error names the variable."""

from __future__ import annotations

import math
from collections.abc import Mapping

from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.logs import valid_level
from oauth3.runtime.serve import Limits


class ConfigError(ValueError):
    """An environment variable holds an invalid value; the message names it."""


def number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """A number within [low, high]; unset or empty gives `default`."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if math.isnan(value) or not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole number within [low, high]; unset or empty gives `default`."""
    value = number(env, name, default, low, high)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env[name]!r}")
    return int(value)


def file_mode(env: Mapping[str, str], name: str, default: int) -> int:
    """An octal permission mode such as 660."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        mode = int(raw, 8)
    except ValueError:
        raise ConfigError(f"{name} must be an octal file mode like 660, got {raw!r}") from None
    if not 0 < mode <= 0o777:
        raise ConfigError(f"{name} must be an octal file mode like 660, got {raw!r}")
    return mode


def log_level(env: Mapping[str, str]) -> str:
    """OAUTH3_LOG_LEVEL: debug, info (default) or warning."""
    try:
        return valid_level(env.get("OAUTH3_LOG_LEVEL", "info"))
    except ValueError as exc:
        raise ConfigError(f"OAUTH3_LOG_LEVEL: {exc}") from None


def log_buffering(env: Mapping[str, str]) -> Buffering:
    """OAUTH3_LOG_BUFFER_LINES (1 writes every line at once) and OAUTH3_LOG_FLUSH_INTERVAL (s)."""
    defaults = Buffering()
    return Buffering(
        max_lines=integer(env, "OAUTH3_LOG_BUFFER_LINES", defaults.max_lines, 1, 10_000),
        flush_interval=number(
            env, "OAUTH3_LOG_FLUSH_INTERVAL", defaults.flush_interval, 0.001, 3600
        ),
    )


def limits(env: Mapping[str, str], prefix: str) -> Limits:
    """Connection limits from `<prefix>KEEPALIVE_TIMEOUT` and `<prefix>MAX_CONNECTIONS`."""
    defaults = Limits()
    return Limits(
        keepalive_timeout=number(
            env, f"{prefix}KEEPALIVE_TIMEOUT", defaults.keepalive_timeout, 0.1, 3600
        ),
        max_connections=integer(
            env, f"{prefix}MAX_CONNECTIONS", defaults.max_connections, 1, 100_000
        ),
    )
