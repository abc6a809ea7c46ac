"""Sidecar configuration, read once from the environment into a frozen, validated object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from oauth3.runtime.envconfig import file_mode, integer, limits, log_buffering, log_level, number
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.serve import Limits
from oauth3.runtime.sidecar_protocol import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SOCKET,
    MAX_QUEUE_SIZE,
    QUEUE_SIZE_ENV,
    SOCKET_ENV,
)

# where the official dstack SDKs look for the guest agent, in order (reference §1.5)
SDK_SOCKET_PATHS = (
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/dstack/dstack.sock",
    "/run/dstack/dstack.sock",
)


def default_agent_socket(env: Mapping[str, str]) -> Path:
    """As the SDKs choose: DSTACK_SIMULATOR_ENDPOINT, else the first existing known path."""
    if env.get("DSTACK_SIMULATOR_ENDPOINT"):
        return Path(env["DSTACK_SIMULATOR_ENDPOINT"])
    for candidate in SDK_SOCKET_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(SDK_SOCKET_PATHS[0])


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Everything the sidecar needs; build with `from_env`."""

    socket: Path
    agent_socket: Path
    socket_mode: int = 0o660
    max_body_bytes: int = 4096
    queue_size: int = DEFAULT_QUEUE_SIZE
    quote_timeout: float = 10.0
    info_timeout: float = 5.0
    retry_after: int = 1
    log_level: str = "info"
    log_buffering: Buffering = field(default_factory=Buffering)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SidecarSettings:
        """Read OAUTH3_SIDECAR_* variables; ConfigError names the first invalid one."""
        env = os.environ if env is None else env
        agent = env.get("OAUTH3_SIDECAR_AGENT_SOCKET")
        return cls(
            socket=Path(env.get(SOCKET_ENV) or DEFAULT_SOCKET),
            agent_socket=Path(agent) if agent else default_agent_socket(env),
            socket_mode=file_mode(env, "OAUTH3_SIDECAR_SOCKET_MODE", 0o660),
            max_body_bytes=integer(env, "OAUTH3_SIDECAR_MAX_BODY_BYTES", 4096, 256, 1 << 20),
            queue_size=integer(env, QUEUE_SIZE_ENV, DEFAULT_QUEUE_SIZE, 1, MAX_QUEUE_SIZE),
            quote_timeout=number(env, "OAUTH3_SIDECAR_QUOTE_TIMEOUT", 10.0, 0.01, 600),
            info_timeout=number(env, "OAUTH3_SIDECAR_INFO_TIMEOUT", 5.0, 0.01, 600),
            retry_after=integer(env, "OAUTH3_SIDECAR_RETRY_AFTER", 1, 1, 3600),
            log_level=log_level(env),
            log_buffering=log_buffering(env),
            limits=limits(env, "OAUTH3_SIDECAR_"),
        )
