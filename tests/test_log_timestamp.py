"""The cached-second timestamp processor produces RFC 3339 UTC that parses back to now; a
queued request line keeps the time of its request."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import orjson
import pytest
import structlog

from oauth3.runtime import logs
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.logs import (
    UtcTimestamp,
    configure_logging,
    flush_logs,
    log_request,
    reset_logging,
)


def test_timestamp_is_rfc3339_utc_and_current() -> None:
    stamp = UtcTimestamp()
    before = time.time()
    first = stamp(None, "info", {})["timestamp"]
    second = stamp(None, "info", {})["timestamp"]
    after = time.time()
    for value in (first, second):
        assert value.endswith("Z")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        assert parsed.tzinfo == UTC
        assert before - 1e-6 <= parsed.timestamp() <= after + 1e-6
    assert first <= second


def test_timestamp_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = UtcTimestamp()
    clock = iter([1_700_000_000_250_000_000, 1_700_000_000_500_000_000, 1_700_000_001_750_001_999])
    monkeypatch.setattr(logs.time, "time_ns", lambda: next(clock))
    values = [stamp(None, "info", {})["timestamp"] for _ in range(3)]
    assert values == [
        "2023-11-14T22:13:20.250000Z",
        "2023-11-14T22:13:20.500000Z",
        "2023-11-14T22:13:21.750001Z",
    ]


def test_a_request_line_carries_the_time_of_the_request_not_of_the_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.BytesIO()
    configure_logging("info", buffering=Buffering(max_lines=100), stream=stream)  # type: ignore[arg-type]
    try:
        monkeypatch.setattr(logs.time, "time_ns", lambda: 1_700_000_000_250_000_000)
        log_request(structlog.get_logger("t"), {"request_id": "r", "status": 200})
        monkeypatch.setattr(logs.time, "time_ns", lambda: 1_700_000_009_500_000_000)
        flush_logs()
    finally:
        reset_logging()
    (line,) = stream.getvalue().splitlines()
    assert orjson.loads(line)["timestamp"] == "2023-11-14T22:13:20.250000Z"
