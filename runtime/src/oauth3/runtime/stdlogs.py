"""Everything Python itself would print goes through structlog as one line: stdlib loggers
(aiohttp, asyncio, libraries), warnings, uncaught exceptions; aiohttp's parser refusals become
one `request_refused` line with a reason and a status, never the request's bytes."""

from __future__ import annotations

import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

import structlog
from aiohttp import http_exceptions as hx

REFUSED = "request_refused"
# aiohttp and llhttp word their refusals as a phrase before any colon ("Invalid char in url
# query", "Too many headers received") and quote request bytes (repr) or put them after the colon;
# a bare token (the Python parser's InvalidURLError(path)) has no space, so it never matches
_SAFE_DETAIL = re.compile(r"(?=.{1,80}$)[A-Z][a-z]*(?: [A-Za-z0-9`/,.-]+)+")
_REASONS: tuple[tuple[type[hx.HttpProcessingError], str], ...] = (
    (hx.LineTooLong, "line_too_long"),
    (hx.InvalidURLError, "invalid_url"),
    (hx.BadHttpMethod, "invalid_method"),
    (hx.BadStatusLine, "invalid_request_line"),
    (hx.InvalidHeader, "invalid_header"),
    (hx.PayloadEncodingError, "invalid_body"),
)
_METHODS = (
    (logging.CRITICAL, "critical"),
    (logging.ERROR, "error"),
    (logging.WARNING, "warning"),
    (logging.INFO, "info"),
)


def refusal_fields(exc: hx.HttpProcessingError) -> dict[str, Any]:
    """`status`, `reason` (a fixed word per kind of refusal) and, when it is aiohttp's own
    fixed wording, `detail`: never a byte of the refused request."""
    reason = next((name for kind, name in _REASONS if isinstance(exc, kind)), "bad_request")
    fields: dict[str, Any] = {"status": exc.code or 400, "reason": reason}
    first = str(exc.message).split("\n", 1)[0].split(":", 1)[0].strip()
    if _SAFE_DETAIL.fullmatch(first):
        fields["detail"] = first
    return fields


def _method(levelno: int) -> str:
    return next((name for floor, name in _METHODS if levelno >= floor), "debug")


class StructlogHandler(logging.Handler):
    """A stdlib handler that re-emits each record through structlog (so it is rendered,
    redacted and written like every other line); `exc_info` keeps its traceback unless the
    exception is an HTTP parser refusal, which becomes one `request_refused` line."""

    def emit(self, record: logging.LogRecord) -> None:
        """Re-emit one record (errors in doing so go to handleError, as for any handler)."""
        try:
            log = structlog.get_logger(record.name)
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, hx.HttpProcessingError):
                # aiohttp logs these at error level with a traceback; they are the client's fault
                method = "debug" if record.levelno < logging.INFO else "info"
                getattr(log, method)(REFUSED, logger=record.name, **refusal_fields(exc))
                return
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            getattr(log, _method(record.levelno))(record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


@dataclass
class _Saved:
    """What route_python_output replaced, to put back in restore_python_output."""

    showwarning: Callable[..., None]
    excepthook: Callable[[type[BaseException], BaseException, TracebackType | None], Any]
    threading_excepthook: Callable[[threading.ExceptHookArgs], Any]
    unraisablehook: Callable[[Any], Any]
    root_level: int
    root_handlers: list[logging.Handler]


_saved: _Saved | None = None


def _show_warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    structlog.get_logger("py.warnings").warning(
        "python_warning",
        category=category.__name__,
        message=str(message),
        filename=filename,
        lineno=lineno,
    )


def _uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    structlog.get_logger("python").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    structlog.get_logger("python").error(
        "thread_exception",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    structlog.get_logger("python").error(
        "unraisable_exception",
        message=unraisable.err_msg or "Exception ignored",
        object_type=type(unraisable.object).__name__,
        exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None,
    )


def route_python_output(level: int) -> None:
    """Send stdlib logging (at `level` and above), warnings and uncaught exceptions of this
    process through structlog; idempotent, undone by restore_python_output()."""
    global _saved  # noqa: PLW0603 - the process has one logging set-up, remembered once
    root = logging.getLogger()
    if _saved is None:
        _saved = _Saved(
            showwarning=warnings.showwarning,
            excepthook=sys.excepthook,
            threading_excepthook=threading.excepthook,
            unraisablehook=sys.unraisablehook,
            root_level=root.level,
            root_handlers=list(root.handlers),
        )
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(StructlogHandler())
    root.setLevel(level)
    warnings.showwarning = _show_warning
    sys.excepthook = _uncaught
    threading.excepthook = _thread_uncaught
    sys.unraisablehook = _unraisable


def restore_python_output() -> None:
    """Put back what route_python_output replaced (for tests that configure logging)."""
    global _saved  # noqa: PLW0603 - see route_python_output
    if _saved is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in _saved.root_handlers:
        root.addHandler(handler)
    root.setLevel(_saved.root_level)
    warnings.showwarning = _saved.showwarning
    sys.excepthook = _saved.excepthook
    threading.excepthook = _saved.threading_excepthook
    sys.unraisablehook = _saved.unraisablehook
    _saved = None
