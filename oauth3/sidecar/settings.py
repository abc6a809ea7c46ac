"""Sidecar configuration, read once from the environment into a frozen, validated object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from oauth3.logs import valid_level

# where the official dstack SDKs look for the guest agent, in order (reference §1.5)
SDK_SOCKET_PATHS = (
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/dstack/dstack.sock",
    "/run/dstack/dstack.sock",
)


class ConfigError(ValueError):
    """An environment variable holds an invalid value; the message names it."""


def default_agent_socket(env: Mapping[str, str]) -> Path:
    """As the SDKs choose: DSTACK_SIMULATOR_ENDPOINT, else the first existing known path."""
    if env.get("DSTACK_SIMULATOR_ENDPOINT"):
        return Path(env["DSTACK_SIMULATOR_ENDPOINT"])
    for candidate in SDK_SOCKET_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(SDK_SOCKET_PATHS[0])


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def _mode(env: Mapping[str, str], name: str, default: int) -> int:
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


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Everything the sidecar needs; build with `from_env`."""

    socket: Path
    agent_socket: Path
    socket_mode: int = 0o660
    max_body_bytes: int = 4096
    queue_size: int = 16
    quote_timeout: float = 10.0
    info_timeout: float = 5.0
    retry_after: int = 1
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SidecarSettings:
        """Read OAUTH3_SIDECAR_* variables; ConfigError names the first invalid one."""
        env = os.environ if env is None else env
        try:
            log_level = valid_level(env.get("OAUTH3_LOG_LEVEL", "info"))
        except ValueError as exc:
            raise ConfigError(f"OAUTH3_LOG_LEVEL: {exc}") from None
        agent = env.get("OAUTH3_SIDECAR_AGENT_SOCKET")
        return cls(
            socket=Path(env.get("OAUTH3_SIDECAR_SOCKET", "/var/run/oauth3/sidecar.sock")),
            agent_socket=Path(agent) if agent else default_agent_socket(env),
            socket_mode=_mode(env, "OAUTH3_SIDECAR_SOCKET_MODE", 0o660),
            max_body_bytes=int(_number(env, "OAUTH3_SIDECAR_MAX_BODY_BYTES", 4096, 256, 1 << 20)),
            queue_size=int(_number(env, "OAUTH3_SIDECAR_QUEUE_SIZE", 16, 1, 10_000)),
            quote_timeout=_number(env, "OAUTH3_SIDECAR_QUOTE_TIMEOUT", 10.0, 0.01, 600),
            info_timeout=_number(env, "OAUTH3_SIDECAR_INFO_TIMEOUT", 5.0, 0.01, 600),
            retry_after=int(_number(env, "OAUTH3_SIDECAR_RETRY_AFTER", 1, 1, 3600)),
            log_level=log_level,
        )
