"""The service in-process, wired to a real sidecar app and a fake agent over unix sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from oauth3.attestation import parse_quote
from oauth3.runtime.env_settings import ConfigError
from oauth3.service import app as service_app
from oauth3.service.app import create_app
from oauth3.service.settings import ServiceSettings, parse_build_info
from oauth3.sidecar.app import QuoteGate
from oauth3.sidecar.settings import SidecarSettings
from tests.fakes import Harness, problem

NONCE = "5a" * 32
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def client(harness: Harness, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(harness.service_settings(), app_version="9.9.9"))


async def body_of(client: TestClient[Any, Any], path: str) -> tuple[int, bytes, Any]:
    response = await client.get(path)
    return response.status, await response.read(), response.headers


async def test_info_is_canonical_with_etag(client: TestClient[Any, Any]) -> None:
    status, body, headers = await body_of(client, "/info")
    assert status == 200
    assert body == b'{"build_info":null,"name":"oauth3","version":"9.9.9"}'
    assert headers["Content-Type"] == "application/json"
    assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    again = await client.get("/info", headers={"If-None-Match": headers["ETag"]})
    assert again.status == 304


async def test_build_info_from_settings(harness: Harness, aiohttp_client: ClientFactory) -> None:
    settings = harness.service_settings(build_info={"git_commit": "abc", "dirty": False})
    client = await aiohttp_client(create_app(settings, app_version="1.0"))
    _, body, _ = await body_of(client, "/info")
    assert (
        body == b'{"build_info":{"dirty":false,"git_commit":"abc"},"name":"oauth3","version":"1.0"}'
    )


@pytest.mark.parametrize("nonce", [None, NONCE])
async def test_attestation_binds_info_and_nonce(
    client: TestClient[Any, Any], nonce: str | None
) -> None:
    _, info, _ = await body_of(client, "/info")
    path = "/attestation" + (f"?nonce={nonce}" if nonce else "")
    status, body, headers = await body_of(client, path)
    assert status == 200, body
    doc = orjson.loads(body)
    report_data = bytes.fromhex(doc["reportData"])
    assert report_data[:32] == hashlib.sha256(info).digest()
    assert report_data[32:] == (bytes.fromhex(nonce) if nonce else bytes(32))
    assert parse_quote(base64.b64decode(doc["quote"])).report.report_data == report_data
    assert doc["nonce"] == nonce
    assert doc["layout"] == "oauth3/v1"
    assert doc["eventLog"] == "[]"
    assert doc["vmConfig"] == "{}"
    assert doc["generatedAt"].endswith("Z")
    assert headers["Cache-Control"] == ("no-store" if nonce else "no-cache")


async def test_cached_quote_served_without_new_agent_calls(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    first = await body_of(client, "/attestation")
    calls = harness.agent.quote_calls()
    second = await body_of(client, "/attestation")
    assert first[1] == second[1]
    assert harness.agent.quote_calls() == calls == 1


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("nonce=abc", "odd number"),
        ("nonce=" + "zz" * 32, "non-hex"),
        ("nonce=" + "ab" * 31, "64 hex characters"),
        ("nonce=" + "ab" * 33, "64 hex characters"),
        ("nonce=", "64 hex characters"),
        ("nonce=" + "00" * 32, "all-zero"),
        (f"nonce={NONCE}&nonce={NONCE}", "more than once"),
        ("nonse=" + NONCE, "unknown query parameter 'nonse'"),
    ],
)
async def test_bad_nonces_are_400_and_never_reach_agent(
    client: TestClient[Any, Any], harness: Harness, query: str, message: str
) -> None:
    await body_of(client, "/attestation")  # let the start-up refresh settle
    before = harness.agent.quote_calls()
    response = await client.get(f"/attestation?{query}")
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert message in problem(await response.read())["detail"]
    assert harness.agent.quote_calls() == before


async def test_unknown_route_and_method_are_problems(client: TestClient[Any, Any]) -> None:
    response = await client.get("/nope")
    assert response.status == 404
    assert problem(await response.read())["title"] == "Not Found"
    response = await client.post("/info")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert problem(await response.read())["status"] == 405


async def test_sidecar_outage_and_recovery(client: TestClient[Any, Any], harness: Harness) -> None:
    await harness.stop_sidecar()
    assert (await client.get("/info")).status == 200
    response = await client.get(f"/attestation?nonce={NONCE}")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert problem(await response.read())["detail"] == "sidecar unavailable"
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "not ready" in problem(await ready.read())["detail"]
    await harness.start_sidecar()
    assert (await client.get(f"/attestation?nonce={NONCE}")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_stalled_agent_gives_504_within_timeout(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    harness.agent.mode = "stall"
    started = asyncio.get_running_loop().time()
    response = await client.get(f"/attestation?nonce={NONCE}")
    assert response.status == 504
    assert "Retry-After" in response.headers
    assert asyncio.get_running_loop().time() - started < 1.5


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("wrong_report_data", "quote does not carry the requested report_data"),
        ("garbage", "agent answer is not JSON"),
        ("500", "agent answered HTTP 500"),
    ],
)
async def test_bad_agent_answers_are_502_and_not_echoed(
    client: TestClient[Any, Any], harness: Harness, mode: str, reason: str
) -> None:
    harness.agent.mode = mode
    with capture_logs() as logs:
        response = await client.get(f"/attestation?nonce={NONCE}")
        body = await response.read()
    assert response.status == 502
    assert problem(body)["detail"] == reason
    assert b"secret-internal-detail" not in body
    events = {entry["event"] for entry in logs}
    assert "agent_error" in events
    if mode == "wrong_report_data":
        assert "quote_binding_refused" in events


async def test_identical_nonces_share_one_agent_call(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    await body_of(client, "/attestation")
    before = harness.agent.quote_calls()
    harness.agent.delay = 0.1
    results = await asyncio.gather(
        *(body_of(client, f"/attestation?nonce={NONCE}") for _ in range(5))
    )
    assert {status for status, _, _ in results} == {200}
    assert len({body for _, body, _ in results}) == 1
    assert harness.agent.quote_calls() == before + 1


async def test_nonce_burst_beyond_queue_only_200_and_503(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    await body_of(client, "/attestation")
    harness.agent.delay = 0.05
    nonces = [f"{i + 1:064x}" for i in range(12)]
    results = await asyncio.wait_for(
        asyncio.gather(*(body_of(client, f"/attestation?nonce={n}") for n in nonces)), timeout=10
    )
    statuses = [status for status, _, _ in results]
    assert set(statuses) == {200, 503}
    assert statuses.count(200) >= 3
    assert all(h["Retry-After"] for s, _, h in results if s == 503)


async def test_cached_quote_kept_until_max_age_then_503(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    settings = harness.service_settings(cache_refresh_interval=0.1, cache_max_age=0.4)
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/attestation")).status == 200
    harness.agent.mode = "500"
    await asyncio.sleep(0.15)
    assert (await client.get("/attestation")).status == 200  # refresh failed, last good kept
    await asyncio.sleep(0.4)
    response = await client.get("/attestation")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    harness.agent.mode = "ok"
    await asyncio.sleep(0.3)  # the refresher backs off and then succeeds again
    assert (await client.get("/attestation")).status == 200


async def test_request_id_shared_with_sidecar_line(client: TestClient[Any, Any]) -> None:
    with capture_logs() as logs:
        response = await client.get(
            f"/attestation?nonce={NONCE}", headers={"X-Request-ID": "trace-7"}
        )
        await response.read()
    assert response.headers["X-Request-ID"] == "trace-7"
    lines = [e for e in logs if e["event"] == "request" and e["request_id"] == "trace-7"]
    assert {e["route"] for e in lines} == {"/attestation", "/GetQuote"}
    service_line = next(e for e in lines if e["route"] == "/attestation")
    assert service_line["status"] == 200
    assert service_line["nonce"] is True
    assert service_line["cache_hit"] is False
    assert service_line["agent_ms"] is not None


async def test_unexpected_exception_is_500_problem(
    harness: Harness, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret-value-in-exception")

    monkeypatch.setattr(service_app, "healthz", boom)
    client = await aiohttp_client(create_app(harness.service_settings()))
    with capture_logs() as logs:
        response = await client.get("/healthz")
        body = await response.read()
    assert response.status == 500
    assert b"secret-value" not in body
    assert problem(body)["detail"] == "internal error"
    assert response.headers["X-Request-ID"]
    assert any(e["event"] == "unhandled_error" for e in logs)
    assert any(e["event"] == "request" and e["status"] == 500 for e in logs)


async def test_a_route_added_without_bookkeeping_stops_the_start(harness: Harness) -> None:
    app = create_app(harness.service_settings())

    async def bare(request: web.Request) -> web.Response:
        return web.Response(text="no request id, no line, no problem+json")

    app.router.add_get("/bare", bare)
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="/bare"):
        await runner.setup()
    await runner.cleanup()


async def test_readyz_and_healthz(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


def test_settings_validation() -> None:
    settings = ServiceSettings.from_env(
        {"OAUTH3_PORT": "9000", "OAUTH3_BUILD_INFO": '{"git_commit":"abc"}'}
    )
    assert settings.port == 9000
    assert settings.build_info == {"git_commit": "abc"}
    limited = ServiceSettings.from_env(
        {"OAUTH3_MAX_CONNECTIONS": "50", "OAUTH3_KEEPALIVE_TIMEOUT": "2.5"}
    )
    assert limited.limits.max_connections == 50
    assert limited.limits.keepalive_timeout == 2.5
    assert parse_build_info("null") is None
    for env, message in [
        ({"OAUTH3_PORT": "http"}, "OAUTH3_PORT must be a number"),
        ({"OAUTH3_PORT": "70000"}, "OAUTH3_PORT must be between"),
        ({"OAUTH3_BUILD_INFO": "[1]"}, "JSON object"),
        ({"OAUTH3_BUILD_INFO": '{"x": 1.5}'}, "float"),
        ({"OAUTH3_CACHE_MAX_AGE": "1", "OAUTH3_CACHE_REFRESH_INTERVAL": "5"}, "at least"),
        ({"OAUTH3_QUOTE_TIMEOUT": "nan"}, "between"),
        ({"OAUTH3_MAX_CONNECTIONS": "1.5"}, "whole number"),
        ({"OAUTH3_KEEPALIVE_TIMEOUT": "0"}, "OAUTH3_KEEPALIVE_TIMEOUT must be between"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ServiceSettings.from_env(env)


async def test_service_turns_away_quotes_beyond_its_own_bound(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    """The service's bound is derived from the sidecar's queue (1 waiting + 1 at the agent)."""
    client = await aiohttp_client(create_app(harness.service_settings(sidecar_queue_size=1)))
    await body_of(client, "/attestation")
    before = harness.agent.quote_calls()
    harness.agent.delay = 0.2
    nonces = [f"{i + 1:064x}" for i in range(6)]
    results = await asyncio.gather(*(client.get(f"/attestation?nonce={n}") for n in nonces))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 503, 503, 503, 503]
    details = {problem(await r.read())["detail"] for r in results if r.status == 503}
    assert details == {"quote queue is full"}
    assert harness.agent.quote_calls() == before + 2  # the 503s never reached the sidecar


async def test_the_service_only_ever_asks_the_sidecar_for_64_bytes(
    harness: Harness, client: TestClient[Any, Any]
) -> None:
    """Cached, per-nonce and batched quotes all reach the agent as exactly 64 report_data bytes,
    which is all the sidecar forwards."""
    nonces = [f"{n:02x}" * 32 for n in range(1, 6)]
    paths = ["/attestation", f"/attestation?nonce={NONCE}"]
    paths += [f"/attestation?nonce={nonce}&layout=oauth3/v2" for nonce in nonces]
    statuses = await asyncio.gather(*(client.get(path) for path in paths))
    assert [response.status for response in statuses] == [200] * len(paths)
    bodies = [orjson.loads(call[2]) for call in harness.agent.calls if call[0] == "GetQuote"]
    assert bodies
    for body in bodies:
        assert list(body) == ["report_data"]
        assert len(bytes.fromhex(body["report_data"])) == 64


@pytest.mark.parametrize("queue", [None, "1", "4", "10000"])
def test_the_services_pending_bound_is_what_the_sidecar_holds(queue: str | None) -> None:
    """Both read the sidecar's queue from one variable; the service turns away what the sidecar
    would: one at the agent plus the queue."""
    env = {} if queue is None else {"OAUTH3_SIDECAR_QUEUE_SIZE": queue}
    sidecar = SidecarSettings.from_env(env)
    service = ServiceSettings.from_env(env)
    assert service.sidecar_queue_size == sidecar.queue_size
    assert service.max_pending_quotes == sidecar.queue_size + 1
    assert QuoteGate(sidecar.queue_size).capacity == service.max_pending_quotes
