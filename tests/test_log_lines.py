"""Every log line of every process is one JSON object: malformed requests that aiohttp's parser
refuses leave one `request_refused` line each (no traceback, no request bytes), and stdlib
loggers, warnings and uncaught exceptions are JSON lines too."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from aiohttp import http_exceptions

from oauth3.runtime.logs import configure_logging, reset_logging
from oauth3.runtime.stdlogs import REFUSED, refusal_fields
from tests.stack import running_stack

MARK = "Mk7q-never-logged"
HOST = "HTTP/1.1\r\nHost: x\r\n\r\n"
MALFORMED = {
    "non-ascii byte in the query": f"GET /info?nonce={MARK}\xff\xfe {HOST}".encode("latin-1"),
    "64 KiB request line": f"GET /info?nonce={MARK}{'a' * 65536} {HOST}".encode(),
    "too many headers": (
        b"GET /info HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, MARK.encode()) for i in range(200))
        + b"\r\n"
    ),
    "header over 8 KiB": f"GET /info HTTP/1.1\r\nX-Big: {MARK}{'b' * 9000}\r\n\r\n".encode(),
    "bad content-length": f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {MARK}\r\n\r\n".encode(),
    "invalid method": f"{MARK} / HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "header without a colon": f"GET /info HTTP/1.1\r\nHost: x\r\n{MARK}\r\n\r\n".encode(),
    "tls on a plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARK.encode(),
}
REASONS = {
    "line_too_long",
    "invalid_url",
    "invalid_method",
    "invalid_request_line",
    "invalid_header",
    "invalid_body",
    "bad_request",
}


def send_raw(connect: tuple[int, Any], payload: bytes) -> bytes:
    """Send `payload` on a fresh connection and read the answer until the server closes."""
    family, address = connect
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def parse_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file as a JSON object; fails on the first line that is not one."""
    parsed = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line[:200]!r}")
        assert isinstance(value, dict), f"{path.name}:{number}: {line[:200]!r}"
        parsed.append(value)
    return parsed


def test_malformed_requests_leave_one_json_line_each_in_every_process() -> None:
    with running_stack(OAUTH3_LOG_LEVEL="debug") as stack:
        port = int(stack.base_url.rsplit(":", 1)[1])
        pccs_port = int(stack.pccs_url.rsplit(":", 1)[1])
        servers = {
            "service": (socket.AF_INET, ("127.0.0.1", port)),
            "sidecar": (socket.AF_UNIX, str(stack.paths.sidecar_socket)),
            "simulator": (socket.AF_UNIX, str(stack.paths.agent_socket)),
            "simulator's PCCS": (socket.AF_INET, ("127.0.0.1", pccs_port)),
        }
        for connect in servers.values():
            for payload in MALFORMED.values():
                answer = send_raw(connect, payload)
                assert answer.split(b"\r\n")[0].split(b" ")[1] == b"400", answer[:100]
        # the stack still serves, and its ordinary lines stay JSON
        assert requests.get(f"{stack.base_url}/info", timeout=10).status_code == 200
        logs = {child.name: child.log_path for child in stack.children}
    refusals: dict[str, list[dict[str, Any]]] = {}
    for name, path in logs.items():
        assert MARK.encode() not in path.read_bytes(), name
        assert b"Traceback" not in path.read_bytes(), name
        lines = parse_lines(path)
        assert lines, name
        refusals[name] = [line for line in lines if line["event"] == REFUSED]
        for line in refusals[name]:
            assert line["status"] == 400
            assert line["reason"] in REASONS
            assert "exception" not in line
    assert len(refusals["service"]) == len(MALFORMED)
    assert len(refusals["sidecar"]) == len(MALFORMED)
    # the simulator process serves the agent socket and the PCCS
    assert len(refusals["simulator"]) == 2 * len(MALFORMED)
    reasons = {line["reason"] for line in refusals["service"]}
    assert {"invalid_url", "line_too_long", "invalid_method"} <= reasons
    assert any(line.get("detail") == "Too many headers received" for line in refusals["service"])


def test_refusal_fields_keep_aiohttp_wording_but_never_request_bytes() -> None:
    too_long = http_exceptions.LineTooLong(f"/info?nonce={MARK}".encode(), 8190)
    assert refusal_fields(too_long) == {
        "status": 400,
        "reason": "line_too_long",
        "detail": "Got more than 8190 bytes when reading",
    }
    method = http_exceptions.BadHttpMethod(MARK)
    assert refusal_fields(method) == {"status": 400, "reason": "invalid_method"}
    header = http_exceptions.InvalidHeader(MARK.encode())
    assert refusal_fields(header) == {
        "status": 400,
        "reason": "invalid_header",
        "detail": "Invalid HTTP header",
    }
    for shape in (
        http_exceptions.InvalidURLError(f"/info?nonce={MARK}"),  # the pure-Python parser's
        http_exceptions.InvalidURLError(MARK),
        http_exceptions.BadStatusLine(f"GET {MARK} HTTP/1.1"),
        http_exceptions.BadHttpMessage(f"Duplicate '{MARK}' header found."),
        http_exceptions.BadHttpMessage(f"Invalid header value char:\n\n  b'{MARK}'\n  ^"),
    ):
        assert MARK not in str(refusal_fields(shape)), shape


@pytest.fixture
def json_log() -> Iterator[io.BytesIO]:
    stream = io.BytesIO()
    configure_logging("info", stream=stream)  # type: ignore[arg-type]
    yield stream
    reset_logging()


def lines_of(stream: io.BytesIO) -> list[dict[str, Any]]:
    raw = stream.getvalue()
    assert raw.endswith(b"\n")
    return [orjson.loads(line) for line in raw.splitlines()]


def test_stdlib_loggers_are_json_lines(json_log: io.BytesIO) -> None:
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    logging.getLogger("some.library").info("connected to %s", "x")
    logging.getLogger("some.library").debug("below the level")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Unhandled exception")
    first, second, third = lines_of(json_log)
    assert (first["logger"], first["level"], first["event"]) == (
        "asyncio",
        "error",
        "Task exception was never retrieved",
    )
    assert (second["logger"], second["event"]) == ("some.library", "connected to x")
    assert third["level"] == "error"
    assert third["exception"][0]["exc_type"] == "ValueError"


def test_aiohttp_parser_refusal_is_one_line_without_traceback(json_log: io.BytesIO) -> None:
    exc = http_exceptions.InvalidURLError(
        f"Invalid char in url query:\n\n  b'GET /?nonce={MARK}\\xff'\n   ^"
    )
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s", "127.0.0.1", exc_info=exc
    )
    (line,) = lines_of(json_log)
    assert MARK.encode() not in json_log.getvalue()
    assert line["event"] == REFUSED
    assert line["level"] == "info"
    assert (line["status"], line["reason"], line["detail"]) == (
        400,
        "invalid_url",
        "Invalid char in url query",
    )


def test_warnings_and_uncaught_exceptions_are_json_lines(json_log: io.BytesIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    try:
        raise RuntimeError("crash")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    warning, crash = lines_of(json_log)
    assert (warning["event"], warning["category"], warning["message"]) == (
        "python_warning",
        "DeprecationWarning",
        "old API",
    )
    assert crash["event"] == "uncaught_exception"
    assert crash["level"] == "critical"
    assert crash["exception"][0]["exc_value"] == "crash"


async def test_asyncio_task_errors_are_json_lines(json_log: io.BytesIO) -> None:
    async def fail() -> None:
        raise OSError("lost")

    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.sleep(0)
    del task  # never awaited: asyncio logs it when the task is collected
    gc.collect()
    (line,) = lines_of(json_log)
    assert line["logger"] == "asyncio"
    assert line["event"].startswith("Task exception was never retrieved")
    assert line["exception"][0]["exc_type"] == "OSError"
