"""The sidecar over real unix sockets: forwarding, refusal, validation, queue bound, failures."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from dstack_sdk import AsyncDstackClient
from structlog.testing import capture_logs

from oauth3.runtime.env_settings import ConfigError
from oauth3.runtime.serve import SocketInUseError, prepare_socket_path
from oauth3.sidecar.__main__ import healthcheck
from oauth3.sidecar.app import MAX_AGENT_RESPONSE_BYTES, create_app
from oauth3.sidecar.settings import SidecarSettings, default_agent_socket
from tests.fakes import FakeAgent, problem, serve_unix, short_socket_dir, unix_session

# what the service sends: hex of exactly 64 bytes, the only report_data the sidecar forwards
FULL = {"report_data": "01" * 64}


@dataclass
class Stack:
    agent: FakeAgent
    settings: SidecarSettings
    sock: Path


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    directory = short_socket_dir()
    agent = FakeAgent()
    settings = SidecarSettings(
        socket=directory / "sidecar.sock",
        agent_socket=directory / "dstack.sock",
        queue_size=2,
        quote_timeout=0.5,
        info_timeout=0.5,
    )
    async with (
        serve_unix(agent.app, settings.agent_socket),
        serve_unix(create_app(settings), settings.socket),
    ):
        yield Stack(agent, settings, settings.socket)


async def test_getquote_forwards_a_body_the_sidecar_built(stack: Stack) -> None:
    body = b'{"report_data": "0xAB' + b"ab" * 63 + b'", "extra": [1, 2, {"x": "GetKey"}]}'
    async with (
        unix_session(stack.sock) as session,
        session.post(
            "http://s/GetQuote",
            data=body,
            headers={"Content-Type": "application/json", "X-Request-ID": "req-123"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "req-123"
        answer = await response.json()
    assert answer["report_data"] == "ab" * 64
    forwarded = b'{"report_data":"' + b"ab" * 64 + b'"}'
    assert stack.agent.calls == [("GetQuote", "POST", forwarded, "req-123")]


@pytest.mark.parametrize("body", [b"", b"{}", b'{"anything": ["goes", 1]}'])
async def test_info_forwards_an_empty_object(stack: Stack, body: bytes) -> None:
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/Info", data=body) as response,
    ):
        assert response.status == 200
        assert (await response.json())["app_id"] == "00" * 20
    assert [(c[0], c[2]) for c in stack.agent.calls] == [("Info", b"{}")]


@pytest.mark.parametrize("body", [b"[1]", b"{nope", b'{"a": 1, "a": 2}'])
async def test_info_refuses_what_is_not_one_json_object(stack: Stack, body: bytes) -> None:
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/Info", data=body) as response,
    ):
        assert response.status == 400
    assert stack.agent.calls == []


async def test_a_redirect_from_the_agent_is_never_followed(stack: Stack) -> None:
    stack.agent.mode = "redirect"
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/GetQuote", json=FULL) as response,
    ):
        assert response.status == 502
        assert "redirect" in problem(await response.read())["detail"]
    assert [c[0] for c in stack.agent.calls] == ["GetQuote"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/GetKey"),
        ("POST", "/GetTlsKey"),
        ("POST", "/Sign"),
        ("POST", "/Verify"),
        ("POST", "/EmitEvent"),
        ("POST", "/Attest"),
        ("POST", "/Version"),
        ("GET", "/GetQuote?report_data=00"),
        ("POST", "/prpc/Tappd.TdxQuote"),
        ("DELETE", "/Info"),
    ],
)
async def test_everything_else_is_403(stack: Stack, method: str, path: str) -> None:
    async with (
        unix_session(stack.sock) as session,
        session.request(method, f"http://s{path}", json={}) as response,
    ):
        assert response.status == 403
        assert response.content_type == "application/problem+json"
        doc = problem(await response.read())
        assert doc["error"] == doc["detail"]
    assert stack.agent.calls == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{nope", 400, "not valid JSON"),
        (b"[1]", 400, "JSON object"),
        (b'{"report_data": 5}', 400, "hex string"),
        (b'{"report_data": "abc"}', 400, "odd number"),
        (b'{"report_data": "zz"}', 400, "non-hex"),
        (b'{"report_data": "' + b"00" * 65 + b'"}', 400, "exactly 64 bytes, not 65"),
        # a second report_data must not slip past the check to the agent
        (b'{"report_data": "00", "report_data": "' + b"00" * 75 + b'"}', 400, "a key twice"),
        (b'{"report_data": "\xff"}', 400, "not valid JSON"),
        (b'{"report_data": "' + b"00" * 5000 + b'"}', 413, "Maximum request body size"),
    ],
)
async def test_invalid_requests_never_reach_agent(
    stack: Stack, body: bytes, status: int, message: str
) -> None:
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/GetQuote", data=body) as response,
    ):
        assert response.status == status
        assert message in problem(await response.read())["detail"]
    assert stack.agent.calls == []


async def test_0x_prefix_and_either_case_accepted(stack: Stack) -> None:
    async with unix_session(stack.sock) as session:
        for body in (
            b'{"report_data": "0x' + b"1A" * 64 + b'"}',
            b'{"report_data": "' + b"1a" * 64 + b'"}',
        ):
            async with session.post("http://s/GetQuote", data=body) as response:
                assert response.status == 200
    forwarded = b'{"report_data":"' + b"1a" * 64 + b'"}'
    assert [c[2] for c in stack.agent.calls] == [forwarded, forwarded]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "report_data is required"),
        (b"{}", "report_data is required"),
        (b'{"other": "' + b"00" * 64 + b'"}', "report_data is required"),
        (b'{"report_data": ""}', "exactly 64 bytes, not 0"),
        (b'{"report_data": "0x"}', "exactly 64 bytes, not 0"),
        (b'{"report_data": "01"}', "exactly 64 bytes, not 1"),
        (b'{"report_data": "' + b"ab" * 32 + b'"}', "exactly 64 bytes, not 32"),
        (b'{"report_data": "' + b"ab" * 63 + b'"}', "exactly 64 bytes, not 63"),
    ],
)
async def test_short_or_missing_report_data_is_refused_not_padded(
    stack: Stack, body: bytes, message: str
) -> None:
    """The agent would zero-pad these into a quote over bytes the caller never sent (issue 22)."""
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/GetQuote", data=body) as response,
    ):
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        doc = problem(await response.read())
    assert message in doc["detail"]
    assert doc["error"] == doc["detail"]  # what dstack clients read
    assert stack.agent.calls == []


async def test_official_dstack_client_gets_64_bytes_quoted_and_short_ones_refused(
    stack: Stack,
) -> None:
    client = AsyncDstackClient(str(stack.sock), timeout=5)
    async with client:
        answer = await client.get_quote(bytes(range(64)))
        assert bytes.fromhex(answer.report_data) == bytes(range(64))
        for short in (b"\x01", bytes(63)):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await client.get_quote(short)
            assert refused.value.response.status_code == 400
            assert "exactly 64 bytes" in refused.value.response.json()["error"]
    assert stack.agent.quote_calls() == 1


async def test_queue_overflow_only_503_beyond_bound(stack: Stack) -> None:
    stack.agent.delay = 0.15
    async with unix_session(stack.sock) as session:

        async def one() -> tuple[int, str | None]:
            async with session.post("http://s/GetQuote", json=FULL) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        results = await asyncio.gather(*(one() for _ in range(10)))
    statuses = sorted(status for status, _ in results)
    # one in the agent plus queue_size=2 waiting; the rest are turned away at once
    assert statuses == [200] * 3 + [503] * 7
    assert all(retry == "1" for status, retry in results if status == 503)
    assert stack.agent.max_active == 1
    assert stack.agent.quote_calls() == 3


async def test_stalled_agent_gives_504(stack: Stack) -> None:
    stack.agent.mode = "stall"
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/GetQuote", json=FULL) as response,
    ):
        assert response.status == 504
        await response.read()
    assert loop.time() - started < 2.0


async def test_agent_errors_relayed_unchanged(stack: Stack) -> None:
    stack.agent.mode = "500"
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/GetQuote", json=FULL) as response,
    ):
        assert response.status == 500
        assert "agent exploded" in await response.text()


async def test_unreachable_agent_gives_503() -> None:
    directory = short_socket_dir()
    settings = SidecarSettings(socket=directory / "s.sock", agent_socket=directory / "absent.sock")
    async with (
        serve_unix(create_app(settings), settings.socket),
        unix_session(settings.socket) as session,
        session.post("http://s/GetQuote", json=FULL) as response,
    ):
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "unavailable" in problem(await response.read())["detail"]


async def test_one_log_line_per_request_with_request_id(stack: Stack) -> None:
    with capture_logs() as logs:
        async with (
            unix_session(stack.sock) as session,
            session.post("http://s/GetQuote", json=FULL, headers={"X-Request-ID": "abc.42"}) as r,
        ):
            await r.read()
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 1
    assert lines[0]["request_id"] == "abc.42"
    assert lines[0]["status"] == 200
    assert lines[0]["route"] == "/GetQuote"
    assert "agent_ms" in lines[0]
    assert "queue_ms" in lines[0]


async def test_malformed_request_id_replaced(stack: Stack) -> None:
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/Info", headers={"X-Request-ID": "bad id\twith spaces"}) as r,
    ):
        assert r.headers["X-Request-ID"] != "bad id\twith spaces"
        assert len(r.headers["X-Request-ID"]) == 32


async def test_healthcheck_probe(stack: Stack) -> None:
    assert await asyncio.to_thread(healthcheck, stack.settings)
    absent = replace(stack.settings, socket=stack.sock.with_name("nothing.sock"))
    assert not await asyncio.to_thread(healthcheck, absent)


def test_prepare_socket_path_stale_live_and_regular(tmp_path: Path) -> None:
    directory = short_socket_dir()
    stale = directory / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound but never listening, then closed: a stale file
    prepare_socket_path(stale)
    assert not stale.exists()

    live = directory / "live.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(live))
        server.listen()
        with pytest.raises(SocketInUseError, match="in use"):
            prepare_socket_path(live)
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(SocketInUseError, match="not a socket"):
        prepare_socket_path(regular)
    assert regular.exists()


def test_settings_from_env(tmp_path: Path) -> None:
    env = {
        "OAUTH3_SIDECAR_SOCKET": "/x/s.sock",
        "OAUTH3_SIDECAR_AGENT_SOCKET": "/x/d.sock",
        "OAUTH3_SIDECAR_QUEUE_SIZE": "4",
        "OAUTH3_SIDECAR_SOCKET_MODE": "600",
    }
    settings = SidecarSettings.from_env(env)
    assert settings.queue_size == 4
    assert settings.socket_mode == 0o600
    assert settings.agent_socket == Path("/x/d.sock")
    assert default_agent_socket({"DSTACK_SIMULATOR_ENDPOINT": "/y/d.sock"}) == Path("/y/d.sock")
    for bad in (
        {"OAUTH3_SIDECAR_QUEUE_SIZE": "lots"},
        {"OAUTH3_SIDECAR_QUEUE_SIZE": "0"},
        {"OAUTH3_SIDECAR_SOCKET_MODE": "999"},
        {"OAUTH3_LOG_LEVEL": "loud"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SidecarSettings.from_env(bad)


@pytest.mark.parametrize(
    ("size", "status"), [(MAX_AGENT_RESPONSE_BYTES, 200), (MAX_AGENT_RESPONSE_BYTES + 1, 502)]
)
async def test_an_agent_answer_over_the_bound_is_refused_whole(
    stack: Stack, size: int, status: int
) -> None:
    stack.agent.mode = f"bytes:{size}"
    async with (
        unix_session(stack.sock) as session,
        session.post("http://s/Info", data=b"{}") as response,
    ):
        body = await response.read()
    assert response.status == status
    if status == 200:
        assert body == b"x" * size  # relayed unchanged, not cut
    else:
        assert problem(body)["detail"] == "the guest agent's answer is too large"
