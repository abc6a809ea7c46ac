"""Sidecar configuration: OAUTH3_SIDECAR_* variables, each declared once (the socket and queue in
the protocol), read into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from oauth3.runtime.env_settings import (
    Setting,
    env_field,
    file_mode,
    integer,
    nested,
    number,
    read_settings,
)
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.logs import LOG_LEVEL
from oauth3.runtime.serve import Limits
from oauth3.runtime.sidecar_protocol import QUEUE_SIZE, SOCKET

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


AGENT_SOCKET = Setting(
    "OAUTH3_SIDECAR_AGENT_SOCKET",
    Path(SDK_SOCKET_PATHS[0]),
    "the guest agent's socket (default: where the dstack SDKs look)",
    Path,
    fallback=default_agent_socket,
)


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Everything the sidecar needs; build with `from_env`."""

    socket: Path = env_field(SOCKET)
    agent_socket: Path = env_field(AGENT_SOCKET)
    socket_mode: int = env_field(
        file_mode(
            "OAUTH3_SIDECAR_SOCKET_MODE", 0o660, "permissions of the sidecar's socket, in octal"
        )
    )
    max_body_bytes: int = env_field(
        integer(
            "OAUTH3_SIDECAR_MAX_BODY_BYTES", 4096, 256, 1 << 20, "largest request body accepted"
        )
    )
    queue_size: int = env_field(QUEUE_SIZE)
    quote_timeout: float = env_field(
        number(
            "OAUTH3_SIDECAR_QUOTE_TIMEOUT", 10.0, 0.01, 600, "seconds the agent gets for one quote"
        )
    )
    info_timeout: float = env_field(
        number("OAUTH3_SIDECAR_INFO_TIMEOUT", 5.0, 0.01, 600, "seconds the agent gets for Info")
    )
    retry_after: int = env_field(
        integer("OAUTH3_SIDECAR_RETRY_AFTER", 1, 1, 3600, "Retry-After of a 503 or 504, in seconds")
    )
    log_level: str = env_field(LOG_LEVEL)
    log_buffering: Buffering = nested(Buffering, "OAUTH3_")
    limits: Limits = nested(Limits, "OAUTH3_SIDECAR_")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SidecarSettings:
        """Read OAUTH3_SIDECAR_* variables; ConfigError names the first invalid one."""
        return read_settings(cls, os.environ if env is None else env)
