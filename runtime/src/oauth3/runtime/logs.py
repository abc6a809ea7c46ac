"""Configure logging once per process: orjson JSON lines off a TTY, a console renderer on one,
for structlog and for everything Python itself would print (see stdlogs); secrets are scrubbed
from every event and tracebacks never carry local variables."""

from __future__ import annotations

import atexit
import contextvars
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

from .env_settings import choice
from .logbuffer import BufferedLogger, Buffering, LineBuffer
from .stdlogs import restore_python_output, route_python_output

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LOG_LEVEL = choice("OAUTH3_LOG_LEVEL", "info", tuple(_LEVELS), "debug, info or warning")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4
_PLAIN = (str, int, float, bool, type(None))
_JSON_LINE = orjson.OPT_APPEND_NEWLINE
_OPEN_BRACKET = ord("[")
_buffer: LineBuffer | None = None
# the request being handled, for every line logged while it is (set by the request bookkeeping)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "oauth3_request_id", default=None
)


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    """Values of environment variables whose names say they are secret (…_TOKEN, …_PASSWORD)."""
    return [value for name, value in env.items() if SECRET_NAME.search(name) and value]


class SecretRedactor:
    """structlog processor: masks secret-named keys and every known secret value, at any depth."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self._secrets = sorted(known, key=len, reverse=True)
        self._needles = [orjson.dumps(secret)[1:-1] for secret in self._secrets]
        self._harmless_keys: set[str] = set()  # seen, and not secret-named
        self._secret_keys: dict[str, bool] = {}  # event keys are few: decide each once

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Scrub one event in place and return it (scalars without secrets are left untouched)."""
        for key, value in event_dict.items():
            if self._is_secret_key(key):
                event_dict[key] = REDACTED
            elif not isinstance(value, _PLAIN) or (self._secrets and isinstance(value, str)):
                event_dict[key] = self._scrub(value)
        return event_dict

    def render(self, event_dict: MutableMapping[str, Any]) -> bytes:
        """The event as one JSON line, scrubbed exactly as __call__ would, cheaply when flat.

        The event is rendered first and scrubbed only when the line shows a reason to: a key
        not yet known to be harmless, a nested value (a `{` past the first byte, or a `[`),
        or a secret in its JSON-escaped form. JSON escapes each character on its own, so a
        secret inside any string value always shows that way; false alarms only cost time.
        """
        try:
            line = orjson.dumps(event_dict, option=_JSON_LINE)
        except TypeError:
            return self._render_scrubbed(event_dict)
        if (
            not self._harmless_keys.issuperset(event_dict)
            or line.find(b"{", 1) != -1
            or _OPEN_BRACKET in line  # an int: a memchr, where b"[" runs the substring search
            or (self._needles and any(needle in line for needle in self._needles))
        ):
            return self._render_scrubbed(event_dict)
        return line

    def _render_scrubbed(self, event_dict: MutableMapping[str, Any]) -> bytes:
        scrubbed = self(None, "", event_dict)
        self._harmless_keys.update(
            key for key in scrubbed if isinstance(key, str) and not self._is_secret_key(key)
        )
        return orjson.dumps(scrubbed, option=_JSON_LINE, default=repr)

    def _is_secret_key(self, key: str) -> bool:
        secret = self._secret_keys.get(key)
        if secret is None:
            secret = self._secret_keys[key] = bool(SECRET_NAME.search(key))
        return secret

    def _scrub(self, value: Any, key: str | None = None) -> Any:
        if key is not None and self._is_secret_key(key):
            return REDACTED
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v, k if isinstance(k, str) else None) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(item) for item in value]
        return value


class UtcTimestamp:
    """structlog processor: `timestamp` as RFC 3339 UTC with microseconds; the formatted second
    is cached, which makes it several times cheaper than TimeStamper(fmt="iso")."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Stamp one event."""
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        """The current time, formatted."""
        return self.format(time.time_ns())

    def format(self, when_ns: int) -> str:
        """A time.time_ns() value, formatted."""
        micros = when_ns // 1000
        second = micros // 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        micros -= second * 1_000_000
        return self._prefix + _THREE_DIGITS[micros // 1000] + _THREE_DIGITS[micros % 1000] + "Z"


_THREE_DIGITS = [f"{n:03d}" for n in range(1000)]  # cheaper than a format spec per line


def add_request_id(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current request's id (request_id_var), unless already given."""
    request_id = request_id_var.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


class _RequestLines:
    """The canonical request line built straight from its fields: the same keys, order,
    timestamp, redaction and buffer as the structlog chain gives an info event, without it.

    A request only stamps its fields and queues them; the buffer renders the queued lines
    together when it writes them, which costs a fraction of rendering each between requests.
    """

    def __init__(
        self,
        redactor: SecretRedactor,
        stamp: UtcTimestamp,
        stream: BinaryIO,
        buffering: Buffering | None,
    ) -> None:
        self._redactor = redactor
        self._stamp = stamp
        self.buffer = LineBuffer(stream, buffering, render=self.render)

    def write(self, fields: dict[str, Any]) -> None:
        """Queue one line."""
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = time.time_ns()
        self.buffer.add(fields)

    def render(self, fields: dict[str, Any]) -> bytes:
        """One queued line as JSON (the buffer calls this when it writes)."""
        fields["timestamp"] = self._stamp.format(fields["timestamp"])
        return self._redactor.render(fields)


_request_lines: _RequestLines | None = None
_request_lines_enabled = True  # False below info level: no request lines at all


def log_request(log: Any, fields: dict[str, Any]) -> None:
    """Log the canonical `request` line with `fields` at info level (the dict is consumed).

    With JSON lines configured it is rendered directly (see _RequestLines); on a console, or
    under structlog.testing.capture_logs(), it goes through `log` like any other event.
    """
    if _request_lines is not None:
        _request_lines.write(fields)
    elif _request_lines_enabled:
        log.info("request", **fields)


def _console_pipeline(
    shared: list[structlog.types.Processor], redactor: SecretRedactor
) -> list[structlog.types.Processor]:
    """Processors for a terminal: readable lines, plain tracebacks, secrets redacted."""
    return [
        *shared,
        structlog.processors.format_exc_info,
        redactor,
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]


def configure_logging(
    level: str = "info",
    *,
    buffering: Buffering | None = None,
    json_lines: bool | None = None,
    secrets: Iterable[str] = (),
    stream: BinaryIO | None = None,
) -> None:
    """Set up structlog for this process (JSON lines to `stream`, default stderr) and route
    stdlib logging, warnings and uncaught exceptions through it. JSON lines are buffered as
    `buffering` says (default: Buffering()); flush_logs() writes them, and runs at exit."""
    global _buffer, _request_lines, _request_lines_enabled  # noqa: PLW0603 - one output per process
    flush_logs()
    if json_lines is None:
        json_lines = stream is not None or not sys.stderr.isatty()
    stamp = UtcTimestamp()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        stamp,
    ]
    redactor = SecretRedactor(secrets)
    factory: Callable[..., Any]
    if json_lines:
        processors: list[structlog.types.Processor] = [
            *shared,
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redactor,
            structlog.processors.JSONRenderer(
                serializer=orjson.dumps, option=orjson.OPT_APPEND_NEWLINE
            ),
        ]
        _request_lines = _RequestLines(redactor, stamp, stream or sys.stderr.buffer, buffering)
        _buffer = _request_lines.buffer
        final_logger = BufferedLogger(_buffer)

        def factory(*args: Any) -> BufferedLogger:
            return final_logger

    else:
        processors = _console_pipeline(shared, redactor)
        factory = structlog.PrintLoggerFactory(sys.stderr)
        _buffer = _request_lines = None
    level_no = _LEVELS.get(level, logging.INFO)
    _request_lines_enabled = level_no <= logging.INFO
    if not _request_lines_enabled:
        _request_lines = None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    route_python_output(level_no)


def flush_logs() -> None:
    """Write the buffered log lines now (serve() calls it when it stops; it also runs at exit)."""
    if _buffer is not None:
        _buffer.flush()


atexit.register(flush_logs)


def reset_logging() -> None:
    """Undo configure_logging (for tests): lines flushed, structlog's defaults, Python's own
    output back."""
    global _buffer, _request_lines, _request_lines_enabled  # noqa: PLW0603 - see configure_logging
    flush_logs()
    _buffer = _request_lines = None
    _request_lines_enabled = True
    structlog.reset_defaults()
    restore_python_output()


def valid_level(value: str) -> str:
    """Return a supported level name (debug, info, warning) or raise ValueError."""
    if value not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {value!r}")
    return value
