"""Configure structlog once per process: orjson JSON lines off a TTY, a console renderer on one."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure_logging(level: str = "info", *, json_lines: bool | None = None) -> None:
    """Set up structlog for this process; tracebacks are rendered without local variables."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        processors: list[structlog.types.Processor] = [
            *shared,
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.types.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def valid_level(value: str) -> str:
    """Return a supported level name (debug, info, warning) or raise ValueError."""
    if value not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {value!r}")
    return value
