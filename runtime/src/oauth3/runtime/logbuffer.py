"""Log lines batched in memory and written together, as nginx's `access_log … buffer= flush=`:
one write(2) per batch instead of one per line."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from .env_settings import env_field, integer, number


def json_line(fields: dict[str, Any]) -> bytes:
    """Fields as one JSON line (LineBuffer's default renderer)."""
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


@dataclass(frozen=True, slots=True)
class Buffering:
    """How many log lines may wait in memory (1: none) and for how long at most."""

    max_lines: int = env_field(
        integer(
            "LOG_BUFFER_LINES",
            32,
            1,
            10_000,
            "log lines held before a write (1: every line at once)",
        )
    )
    flush_interval: float = env_field(
        number("LOG_FLUSH_INTERVAL", 0.5, 0.001, 3600, "seconds a buffered log line waits at most")
    )

    @property
    def max_lost_lines(self) -> int:
        """The most lines a SIGKILL can lose: what the buffer holds between two writes."""
        return max(1, self.max_lines) - 1


class LineBuffer:
    """Holds up to `max_lines - 1` lines; writes them all when the next one arrives, when the
    oldest has waited `flush_interval` seconds, before any urgent line, and on flush().

    So a process killed without warning (SIGKILL, OOM) loses at most `max_lines - 1` lines,
    those of its last `flush_interval` seconds unless a blocked event loop held the timer back;
    lines logged where no event loop runs (start-up, shutdown, other threads) are written at
    once unless a running loop's timer will flush them, since nothing else would.
    """

    def __init__(
        self,
        stream: BinaryIO,
        buffering: Buffering | None = None,
        *,
        render: Callable[[dict[str, Any]], bytes] = json_line,
    ) -> None:
        buffering = buffering or Buffering()
        self._stream = stream
        self._max_lines = max(1, buffering.max_lines)
        self._interval = buffering.flush_interval
        self._render = render
        self._lines: list[bytes | dict[str, Any]] = []
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, line: bytes | dict[str, Any]) -> None:
        """Buffer one line: bytes ending in a newline, or fields that `render` turns into one
        when the batch is written; write the batch when it is full."""
        with self._lock:
            lines = self._lines
            lines.append(line)
            if len(lines) >= self._max_lines:
                self._write_locked()
            # a timer armed on a loop that has since stopped would never fire: re-arm then
            elif self._timer_loop is None or not self._timer_loop.is_running():
                self._arm_locked()

    def _arm_locked(self) -> None:
        # asyncio._get_running_loop costs a getpid(2) on every call, hence only when arming
        loop = asyncio._get_running_loop()  # None where no loop runs, without an exception
        if loop is None:
            self._write_locked()
        else:
            self._timer = loop.call_later(self._interval, self.flush)
            self._timer_loop = loop

    def urgent(self, line: bytes) -> None:
        """Write the buffered lines and this one now (warnings and errors)."""
        with self._lock:
            self._lines.append(line)
            self._write_locked()

    def flush(self) -> None:
        """Write whatever is buffered (the timer, shutdown and exit call this)."""
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_loop = None
        if not self._lines:
            return
        render = self._render
        batch = b"".join(
            [line if isinstance(line, bytes) else render(line) for line in self._lines]
        )
        self._lines.clear()
        self._stream.write(batch)
        self._stream.flush()


class BufferedLogger:
    """structlog's final logger over a LineBuffer: debug and info lines are buffered, warnings
    and errors are written at once (with everything buffered before them, in order)."""

    def __init__(self, buffer: LineBuffer) -> None:
        self._buffer = buffer

    def info(self, line: bytes) -> None:
        """Buffer one rendered line (it already ends in a newline)."""
        self._buffer.add(line)

    def warning(self, line: bytes) -> None:
        """Write the buffer and this line now."""
        self._buffer.urgent(line)

    debug = msg = log = info
    warn = error = err = critical = fatal = exception = warning
