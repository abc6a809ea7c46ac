"""The fault matrix: each row one failure, the status a client sees, the log line, and recovery
without a restart. Agent faults run in-process (fake agent); sidecar and service faults run on
the real three-process stack."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from oauth3.service.app import create_app
from tests.fakes import Harness, problem
from tests.stack import RunningStack, running_stack
from tests.test_service import ClientFactory

NONCE = "fa" * 32

# fault -> (status the client sees, detail in the problem, service log event)
AGENT_FAULTS: dict[str, tuple[int, str, str]] = {
    "garbage": (502, "agent answer is not JSON", "agent_error"),
    "truncated": (502, "agent returned an unparsable quote", "quote_binding_refused"),
    "wrong_report_data": (
        502,
        "quote does not carry the requested report_data",
        "quote_binding_refused",
    ),
    "400": (502, "agent answered HTTP 400", "agent_error"),
    "500": (502, "agent answered HTTP 500", "agent_error"),
    "drop": (502, "agent answered HTTP 502", "agent_error"),  # the sidecar's own 502
    "stall": (504, "agent timeout", "agent_error"),
}


@pytest.fixture
async def client(harness: Harness, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(harness.service_settings()))


@pytest.mark.parametrize("fault", sorted(AGENT_FAULTS))
async def test_agent_fault_then_recovery(
    client: TestClient[Any, Any],
    harness: Harness,
    fault: str,
) -> None:
    status, detail, event = AGENT_FAULTS[fault]
    harness.agent.mode = fault
    with capture_logs() as logs:
        response = await client.get(f"/attestation?nonce={NONCE}")
        body = await response.read()
    assert response.status == status
    assert problem(body)["detail"] == detail
    assert b"secret-internal-detail" not in body
    assert event in {entry["event"] for entry in logs}
    assert (await client.get("/info")).status == 200
    harness.agent.mode = "ok"
    assert (await client.get(f"/attestation?nonce={NONCE}")).status == 200


async def test_slow_agent_within_timeout_is_served(
    client: TestClient[Any, Any],
    harness: Harness,
) -> None:
    assert (await client.get("/attestation")).status == 200  # the start-up refresh is done
    harness.agent.delay = 0.3  # the sidecar allows 0.5 s, queueing included
    assert (await client.get(f"/attestation?nonce={NONCE}")).status == 200


# ---- sidecar and service faults on the real stack ------------------------------------------


@pytest.fixture
def stack() -> Iterator[RunningStack]:
    with running_stack() as started:
        yield started


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as response:
            await response.read()
            return response.status
    except aiohttp.ClientConnectionError:
        return 0  # connection refused: the service itself is down


async def wait_for_status(session: aiohttp.ClientSession, url: str, want: int) -> int:
    for _ in range(100):
        got = await status_of(session, url)
        if got == want:
            return got
        await asyncio.sleep(0.1)
    return got


def log_events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.startswith(b"{")]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_sidecar_killed_leaves_a_stale_socket_and_restarts_cleanly(
    stack: RunningStack, session: aiohttp.ClientSession
) -> None:
    url = f"{stack.base_url}/attestation?nonce={NONCE}"
    stack.child("sidecar").process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(stack.child("sidecar").process.wait, 10)
    assert stack.paths.sidecar_socket.exists()  # SIGKILL: nobody removed it
    assert await status_of(session, url) == 503
    assert await status_of(session, f"{stack.base_url}/info") == 200
    assert await status_of(session, f"{stack.base_url}/readyz") == 503
    await asyncio.to_thread(stack.start_sidecar)  # replaces the stale file
    assert await wait_for_status(session, url, 200) == 200
    events = log_events(stack.child("service").log_path)
    assert any(e["event"] == "agent_error" and e.get("status") == 503 for e in events)


async def test_sidecar_socket_file_deleted_comes_back_without_restart(
    stack: RunningStack, session: aiohttp.ClientSession
) -> None:
    url = f"{stack.base_url}/attestation?nonce={NONCE}"
    sidecar_pid = stack.child("sidecar").process.pid
    stack.paths.sidecar_socket.unlink()
    for _ in range(50):
        await asyncio.sleep(0.1)
        if await asyncio.to_thread(stack.paths.sidecar_socket.exists):
            break
    assert await wait_for_status(session, url, 200) == 200
    assert stack.child("sidecar").process.pid == sidecar_pid
    assert stack.child("sidecar").process.poll() is None
    events = log_events(stack.child("sidecar").log_path)
    assert any(e["event"] == "socket_file_lost" for e in events)


async def test_agent_socket_deleted_comes_back_without_restart(
    stack: RunningStack, session: aiohttp.ClientSession
) -> None:
    url = f"{stack.base_url}/attestation?nonce={NONCE}"
    stack.paths.agent_socket.unlink()
    assert await wait_for_status(session, url, 200) == 200
    assert stack.child("simulator").process.poll() is None


async def test_service_restart_while_clients_poll(
    stack: RunningStack, session: aiohttp.ClientSession
) -> None:
    url = f"{stack.base_url}/attestation"
    seen: list[int] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            seen.append(await status_of(session, url))
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    await asyncio.sleep(0.3)
    service = stack.child("service")
    service.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.process.wait, 10) == 0
    env = {
        **os.environ,
        "OAUTH3_SIDECAR_SOCKET": str(stack.paths.sidecar_socket),
        "OAUTH3_HOST": "127.0.0.1",
        "OAUTH3_PORT": stack.base_url.rsplit(":", 1)[1],
        "OAUTH3_METRICS_PORT": "0",
    }
    service.process = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "oauth3.service"], env=env, stderr=service.log_file
    )
    assert await wait_for_status(session, url, 200) == 200
    await asyncio.sleep(0.3)
    stop.set()
    await poller
    # while it was down clients saw refused connections (0), never an error status
    assert set(seen) <= {200, 0}, seen
    assert seen[-1] == 200
    assert 0 in seen
