"""The cached-second timestamp processor produces RFC 3339 UTC that parses back to now."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from oauth3.runtime import logs
from oauth3.runtime.logs import UtcTimestamp


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
    clock = iter([1_700_000_000.25, 1_700_000_000.5, 1_700_000_001.75])
    monkeypatch.setattr(logs.time, "time", lambda: next(clock))
    values = [stamp(None, "info", {})["timestamp"] for _ in range(3)]
    assert values == [
        "2023-11-14T22:13:20.250000Z",
        "2023-11-14T22:13:20.500000Z",
        "2023-11-14T22:13:21.750000Z",
    ]
