"""Buffered log output: lines wait in memory until the buffer fills, a short interval passes, a
warning arrives or the process stops (SIGTERM); a SIGKILL loses at most the buffer minus one."""

from __future__ import annotations

import asyncio
import io
import signal
from pathlib import Path
from typing import Any

import orjson
import requests

from oauth3.runtime.logbuffer import Buffering, LineBuffer
from tests.stack import running_stack


class RecordingStream(io.BytesIO):
    """A stream that remembers each write (one write(2) per batch is the point)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


def test_lines_wait_until_the_buffer_is_full() -> None:
    stream = RecordingStream()
    buffer = LineBuffer(stream, Buffering(max_lines=4, flush_interval=3600))

    async def log_five() -> None:
        for n in range(5):
            buffer.add(b"%d\n" % n)

    asyncio.run(log_five())
    assert stream.writes == [b"0\n1\n2\n3\n"]  # one write for four lines; the fifth waits
    buffer.flush()
    assert stream.getvalue() == b"0\n1\n2\n3\n4\n"


def test_urgent_lines_are_written_at_once_after_what_was_buffered() -> None:
    stream = RecordingStream()
    buffer = LineBuffer(stream, Buffering(max_lines=100, flush_interval=3600))

    async def log() -> None:
        buffer.add(b"info\n")
        assert stream.writes == []
        buffer.urgent(b"warning\n")

    asyncio.run(log())
    assert stream.writes == [b"info\nwarning\n"]


async def test_the_interval_flushes_a_partial_buffer() -> None:
    stream = RecordingStream()
    buffer = LineBuffer(stream, Buffering(max_lines=100, flush_interval=0.05))
    buffer.add(b"a\n")
    buffer.add(b"b\n")
    assert stream.writes == []
    for _ in range(100):
        await asyncio.sleep(0.02)
        if stream.writes:
            break
    assert stream.writes == [b"a\nb\n"]


def test_without_an_event_loop_lines_are_written_at_once() -> None:
    stream = RecordingStream()
    buffer = LineBuffer(stream, Buffering(max_lines=100, flush_interval=3600))
    buffer.add(b"start-up\n")
    assert stream.writes == [b"start-up\n"]


def test_queued_fields_are_rendered_in_order_when_written() -> None:
    stream = RecordingStream()
    rendered: list[dict[str, Any]] = []

    def render(fields: dict[str, Any]) -> bytes:
        rendered.append(fields)
        return b"fields %d\n" % fields["n"]

    buffer = LineBuffer(stream, Buffering(max_lines=100, flush_interval=3600), render=render)

    async def log() -> None:
        buffer.add(b"line 0\n")
        buffer.add({"n": 1})
        buffer.add(b"line 2\n")
        assert rendered == []

    asyncio.run(log())
    buffer.flush()
    assert stream.writes == [b"line 0\nfields 1\nline 2\n"]


def test_a_timer_left_on_a_stopped_loop_is_armed_again_on_the_next() -> None:
    stream = RecordingStream()
    buffer = LineBuffer(stream, Buffering(max_lines=100, flush_interval=0.01))

    async def log(line: bytes) -> None:
        buffer.add(line)

    async def log_and_wait(line: bytes) -> None:
        buffer.add(line)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if stream.writes:
                break

    asyncio.run(log(b"first\n"))  # its loop stops before the timer fires
    assert stream.writes == []
    asyncio.run(log_and_wait(b"second\n"))
    assert stream.writes == [b"first\nsecond\n"]


def test_a_sigkill_can_lose_at_most_the_buffer_minus_one() -> None:
    assert Buffering(max_lines=32).max_lost_lines == 31
    assert Buffering(max_lines=1).max_lost_lines == 0


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def request_ids(path: Path, prefix: str) -> list[str]:
    return [
        line["request_id"]
        for line in log_lines(path)
        if line["event"] == "request" and line.get("request_id", "").startswith(prefix)
    ]


def get_info(base_url: str, request_id: str) -> None:
    response = requests.get(f"{base_url}/info", headers={"X-Request-ID": request_id}, timeout=10)
    assert response.status_code == 200


def test_buffered_lines_are_written_on_sigterm() -> None:
    env = {"OAUTH3_LOG_BUFFER_LINES": "10000", "OAUTH3_LOG_FLUSH_INTERVAL": "3600"}
    with running_stack(**env) as stack:
        service = stack.child("service")
        sent = [f"term-{n}" for n in range(20)]
        for request_id in sent:
            get_info(stack.base_url, request_id)
        assert request_ids(service.log_path, "term-") == []  # all of them still in memory
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(10) == 0
        assert request_ids(service.log_path, "term-") == sent
        assert log_lines(service.log_path)[-1]["event"] == "stopped"


def test_sigkill_loses_no_more_than_the_buffer_holds() -> None:
    env = {"OAUTH3_LOG_BUFFER_LINES": "8", "OAUTH3_LOG_FLUSH_INTERVAL": "3600"}
    with running_stack(**env) as stack:
        service = stack.child("service")
        sent = [f"kill-{n}" for n in range(21)]
        for request_id in sent:
            get_info(stack.base_url, request_id)
        service.process.kill()
        service.process.wait(10)
        written = request_ids(service.log_path, "kill-")
    assert written == sent[: len(written)]  # whole batches, in order
    assert len(sent) - len(written) <= Buffering(max_lines=8).max_lost_lines
    assert len(written) >= 8
