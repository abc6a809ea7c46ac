"""The service's one sidecar client against a real aiohttp app on a unix socket: quotes, the
readiness probe and the metrics scrape over one session, answers decoded into types."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from oauth3.runtime.sidecar_protocol import AGENT_MS_HEADER, QUEUE_MS_HEADER
from oauth3.service.sidecar_client import (
    MAX_ANSWER_BYTES,
    AgentBadAnswerError,
    AgentUnavailableError,
    SidecarClient,
)
from tests.fakes import serve_unix, short_socket_dir


class FakeSidecar:
    """Answers each path as the test sets it; records the paths and request ids it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.answers: dict[str, web.Response] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers["X-Request-ID"]))
        return self.answers[request.path]


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[FakeSidecar, SidecarClient]]:
    directory = short_socket_dir()
    fake = FakeSidecar()
    client = SidecarClient(directory / "s.sock", timeout=1.0, retry_after=3)
    try:
        async with serve_unix(fake.app, directory / "s.sock"):
            await client.start()
            yield fake, client
            await client.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_quote_carries_the_sidecars_timings(
    sidecar: tuple[FakeSidecar, SidecarClient],
) -> None:
    fake, client = sidecar
    body = {"quote": "0400", "event_log": "[]", "report_data": "00" * 64, "vm_config": "{}"}
    headers = {QUEUE_MS_HEADER: "1.5", AGENT_MS_HEADER: "39"}
    fake.answers["/GetQuote"] = web.json_response(body, headers=headers)
    answer = await client.get_quote(bytes(64), "r1")
    assert (answer.quote, answer.queue_ms, answer.agent_ms) == (b"\x04\x00", 1.5, 39.0)
    assert fake.seen == [("POST", "/GetQuote", "r1")]


async def test_the_metrics_scrape_and_the_probe_use_the_same_client(
    sidecar: tuple[FakeSidecar, SidecarClient],
) -> None:
    fake, client = sidecar
    fake.answers["/metrics"] = web.Response(body=b"oauth3_sidecar_x 1\n")
    fake.answers["/Info"] = web.json_response({"app_id": "ab"})
    assert await client.metrics_text(1.0) == b"oauth3_sidecar_x 1\n"
    assert await client.agent_info("r2", 1.0) == {"app_id": "ab"}
    assert [(m, p) for m, p, _ in fake.seen] == [("GET", "/metrics"), ("POST", "/Info")]


async def test_a_503_keeps_the_sidecars_retry_after(
    sidecar: tuple[FakeSidecar, SidecarClient],
) -> None:
    fake, client = sidecar
    fake.answers["/GetQuote"] = web.Response(status=503, headers={"Retry-After": "7"})
    with pytest.raises(AgentUnavailableError) as caught:
        await client.get_quote(bytes(64), "r3")
    assert caught.value.retry_after == 7


async def test_an_answer_longer_than_the_cap_is_refused_not_read_whole(
    sidecar: tuple[FakeSidecar, SidecarClient],
) -> None:
    fake, client = sidecar
    padding = "x" * MAX_ANSWER_BYTES
    fake.answers["/GetQuote"] = web.json_response({"quote": "0400", "event_log": padding})
    with pytest.raises(AgentBadAnswerError, match="not JSON"):
        await client.get_quote(bytes(64), "r4")


async def test_no_sidecar_is_unavailable(tmp_path: Path) -> None:
    client = SidecarClient(tmp_path / "absent.sock", timeout=1.0, retry_after=2)
    await client.start()
    try:
        with pytest.raises(AgentUnavailableError, match="sidecar unavailable"):
            await client.metrics_text(1.0)
    finally:
        await client.close()
