"""Metrics move with the events they count, on a listener apart from the API; sidecar ones too."""

from __future__ import annotations

import asyncio
import math
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from oauth3.runtime.env_settings import ConfigError
from oauth3.runtime.metrics import REQUEST_BUCKETS
from oauth3.service.app import create_app
from oauth3.service.metrics import ServiceMetrics, checked_sidecar_text
from oauth3.service.settings import ServiceSettings
from tests.fakes import Harness, unix_session
from tests.stack import free_port
from tests.test_service import NONCE, ClientFactory

Labels = tuple[tuple[str, str], ...]


class Scrape(dict[tuple[str, Labels], float]):
    """One scrape of the metrics listener, parsed: (sample name, labels) -> value."""

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the sample is absent."""
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def names(self) -> set[str]:
        """Every sample name present."""
        return {name for name, _ in self}


def parse(text: str) -> Scrape:
    """Parse a Prometheus text exposition (fails the test if it does not parse)."""
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return scrape


@dataclass
class Running:
    """An in-process service with its metrics listener, and the harness behind it."""

    client: TestClient[Any, Any]
    harness: Harness
    metrics_url: str

    async def scrape(self) -> Scrape:
        """GET /metrics from the metrics listener over real TCP."""
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            return parse(await response.text())

    async def get(self, path: str) -> int:
        """GET a public API path and return the status."""
        response = await self.client.get(path)
        await response.read()
        return response.status


@pytest.fixture
async def running(harness: Harness, aiohttp_client: ClientFactory) -> Running:
    port = free_port()
    settings = harness.service_settings(metrics_port=port)
    client = await aiohttp_client(create_app(settings, app_version="9.9.9"))
    started = Running(client, harness, f"http://127.0.0.1:{port}/metrics")
    assert await started.get("/attestation") == 200  # the start-up refresh has settled
    return started


async def test_cached_hit_counted_with_route_and_status(running: Running) -> None:
    before = await running.scrape()
    assert await running.get("/attestation") == 200
    after = await running.scrape()
    assert after.value("oauth3_quotes_total", outcome="cached") == (
        before.value("oauth3_quotes_total", outcome="cached") + 1
    )
    assert after.value("oauth3_quotes_total", outcome="fresh") == before.value(
        "oauth3_quotes_total", outcome="fresh"
    )
    labels = {"route": "/attestation", "status": "200"}
    assert after.value("oauth3_requests_total", **labels) == (
        before.value("oauth3_requests_total", **labels) + 1
    )
    count = "oauth3_request_duration_seconds_count"
    assert after.value(count, route="/attestation") == before.value(count, route="/attestation") + 1
    assert running.harness.agent.quote_calls() == 1


async def test_fresh_quote_counts_agent_and_queue_timings(running: Running) -> None:
    before = await running.scrape()
    assert await running.get(f"/attestation?nonce={NONCE}") == 200
    after = await running.scrape()
    for name, labels in [
        ("oauth3_quotes_total", {"outcome": "fresh"}),
        ("oauth3_agent_call_seconds_count", {}),
        ("oauth3_quote_queue_seconds_count", {}),
        ("oauth3_sidecar_call_seconds_count", {}),
        ("oauth3_sidecar_agent_call_seconds_count", {"method": "GetQuote"}),
        ("oauth3_sidecar_requests_total", {"route": "/GetQuote", "status": "200"}),
    ]:
        assert after.value(name, **labels) == before.value(name, **labels) + 1, name
    assert after.value("oauth3_agent_call_seconds_sum") > before.value(
        "oauth3_agent_call_seconds_sum"
    )


async def test_coalesced_quotes_counted(running: Running) -> None:
    running.harness.agent.delay = 0.1
    before = await running.scrape()
    statuses = await asyncio.gather(*(running.get(f"/attestation?nonce={NONCE}") for _ in range(4)))
    after = await running.scrape()
    assert statuses == [200] * 4
    delta = {
        outcome: after.value("oauth3_quotes_total", outcome=outcome)
        - before.value("oauth3_quotes_total", outcome=outcome)
        for outcome in ("fresh", "coalesced")
    }
    assert delta == {"fresh": 1, "coalesced": 3}


@pytest.mark.parametrize("query", ["nonce=abc", "nonce=" + "00" * 32, f"nonce={NONCE}&nonce=11"])
async def test_rejected_nonce_counted(running: Running, query: str) -> None:
    before = await running.scrape()
    assert await running.get(f"/attestation?{query}") == 400
    after = await running.scrape()
    assert after.value("oauth3_nonce_rejections_total") == (
        before.value("oauth3_nonce_rejections_total") + 1
    )
    labels = {"route": "/attestation", "status": "400"}
    assert after.value("oauth3_requests_total", **labels) == (
        before.value("oauth3_requests_total", **labels) + 1
    )


async def test_binding_refused_is_a_rejected_quote(running: Running) -> None:
    running.harness.agent.mode = "wrong_report_data"
    before = await running.scrape()
    assert await running.get(f"/attestation?nonce={NONCE}") == 502
    after = await running.scrape()
    assert after.value("oauth3_quotes_total", outcome="rejected") == (
        before.value("oauth3_quotes_total", outcome="rejected") + 1
    )


async def test_sidecar_outage_keeps_service_metrics(running: Running) -> None:
    assert (await running.scrape()).value("oauth3_sidecar_metrics_up") == 1
    await running.harness.stop_sidecar()
    before = await running.scrape()
    assert await running.get(f"/attestation?nonce={NONCE}") == 503
    after = await running.scrape()
    assert after.value("oauth3_sidecar_metrics_up") == 0
    assert not any(name.startswith("oauth3_sidecar_requests") for name in after.names())
    assert after.value("oauth3_quotes_total", outcome="rejected") == (
        before.value("oauth3_quotes_total", outcome="rejected") + 1
    )
    assert after.value("oauth3_requests_total", route="/attestation", status="503") == 1
    await running.harness.start_sidecar()
    recovered = await running.scrape()
    assert recovered.value("oauth3_sidecar_metrics_up") == 1
    assert "oauth3_sidecar_queue_depth" in recovered.names()


@pytest.mark.parametrize(("mode", "kind"), [("500", "http_error"), ("stall", "timeout")])
async def test_agent_errors_counted_by_kind(running: Running, mode: str, kind: str) -> None:
    before = await running.scrape()
    running.harness.agent.mode = mode
    assert await running.get(f"/attestation?nonce={NONCE}") in (502, 504)
    after = await running.scrape()
    name = "oauth3_sidecar_agent_errors_total"
    assert after.value(name, kind=kind) == before.value(name, kind=kind) + 1


async def test_queue_depth_and_queue_rejections(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    """The sidecar counts its own rejections: here the service is told of a larger queue than
    the sidecar has (as when the two are configured apart), so the sidecar is the one refusing."""
    port = free_port()
    settings = harness.service_settings(metrics_port=port, sidecar_queue_size=16)
    client = await aiohttp_client(create_app(settings))
    running = Running(client, harness, f"http://127.0.0.1:{port}/metrics")
    assert await running.get("/attestation") == 200
    running.harness.agent.delay = 0.12  # three quotes in a row stay within the 0.5 s timeout
    before = await running.scrape()
    assert before.value("oauth3_sidecar_queue_depth") == 0
    burst = [asyncio.create_task(running.get(f"/attestation?nonce={i + 1:064x}")) for i in range(5)]
    depths = []
    while not all(task.done() for task in burst):
        depths.append((await running.scrape()).value("oauth3_sidecar_queue_depth"))
        await asyncio.sleep(0.01)
    statuses = await asyncio.gather(*burst)
    after = await running.scrape()
    assert max(depths) == 3  # queue_size 2 + the one quoting
    assert sorted(statuses) == [200, 200, 200, 503, 503]
    assert after.value("oauth3_sidecar_queue_rejections_total") == (
        before.value("oauth3_sidecar_queue_rejections_total") + 2
    )
    assert after.value("oauth3_sidecar_queue_depth") == 0


async def test_cache_age_computed_at_scrape_time(running: Running) -> None:
    first = (await running.scrape()).value("oauth3_cached_quote_age_seconds")
    await asyncio.sleep(0.2)
    second = (await running.scrape()).value("oauth3_cached_quote_age_seconds")
    assert 0 <= first < 5
    assert second >= first + 0.15


async def test_cache_age_infinite_without_a_quote(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    await harness.stop_sidecar()
    port = free_port()
    await aiohttp_client(create_app(harness.service_settings(metrics_port=port)))
    running = Running(None, harness, f"http://127.0.0.1:{port}/metrics")  # type: ignore[arg-type]
    scrape = await running.scrape()
    assert math.isinf(scrape.value("oauth3_cached_quote_age_seconds"))
    assert scrape.value("oauth3_cache_refreshes_total", result="error") >= 1


async def test_metrics_only_on_their_own_listener(running: Running) -> None:
    assert await running.get("/metrics") == 404
    async with aiohttp.ClientSession() as session:
        other = running.metrics_url.replace("/metrics", "/info")
        async with session.get(other) as response:
            assert response.status == 404


async def test_sidecar_serves_its_metrics_on_its_socket(harness: Harness) -> None:
    async with (
        unix_session(harness.sidecar_settings.socket) as session,
        session.get("http://s/metrics") as response,
    ):
        assert response.status == 200
        scrape = parse(await response.text())
    assert "oauth3_sidecar_queue_depth" in scrape.names()
    assert all(name.startswith("oauth3_sidecar_") for name in scrape.names())
    async with (
        unix_session(harness.sidecar_settings.socket) as session,
        session.post("http://s/metrics") as response,
    ):
        assert response.status == 403  # only GET is served; the catch-all refuses the rest


async def test_canonical_lines_carry_cache_nonce_and_timings(running: Running) -> None:
    with capture_logs() as logs:
        assert await running.get("/attestation") == 200
        assert await running.get(f"/attestation?nonce={NONCE}") == 200
    cached, fresh = (e for e in logs if e["event"] == "request" and e["route"] == "/attestation")
    for line in (cached, fresh):
        assert {"request_id", "route", "status", "duration_ms"} <= set(line)
        assert line["status"] == 200
    assert (cached["cache_hit"], cached["nonce"], cached["quote"]) == (True, False, "cached")
    assert (fresh["cache_hit"], fresh["nonce"], fresh["quote"]) == (False, True, "fresh")
    assert fresh["queue_ms"] >= 0
    assert fresh["agent_ms"] > 0


async def test_busy_metrics_port_only_warns(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with capture_logs() as logs:
            client = await aiohttp_client(create_app(harness.service_settings(metrics_port=port)))
        response = await client.get("/info")
        assert response.status == 200
    assert any(e["event"] == "metrics_listener_failed" for e in logs)


def test_metrics_settings() -> None:
    assert ServiceSettings.from_env({}).metrics_port == 9464
    settings = ServiceSettings.from_env(
        {"OAUTH3_METRICS_PORT": "0", "OAUTH3_METRICS_HOST": "127.0.0.2"}
    )
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.2", 0)
    with pytest.raises(ConfigError, match="OAUTH3_METRICS_PORT must be"):
        ServiceSettings.from_env({"OAUTH3_METRICS_PORT": "metrics"})


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        (b"# TYPE oauth3_sidecar_x gauge\noauth3_sidecar_x 1\n", True),
        (b"# TYPE oauth3_requests_total counter\noauth3_requests_total 1\n", False),
        (b"oauth3_sidecar_x{broken 1\n", False),
        (b"\xff\xfe", False),
    ],
)
def test_sidecar_text_checked_before_relaying(body: bytes, accepted: bool) -> None:
    assert (checked_sidecar_text(body) is not None) is accepted


def test_request_figures_read_as_prometheus_clients_own_counter_and_histogram() -> None:
    ours = ServiceMetrics()
    reference = CollectorRegistry()
    requests = Counter("oauth3_requests", "", ["route", "status"], registry=reference)
    latency = Histogram(
        "oauth3_request_duration_seconds",
        "",
        ["route"],
        buckets=REQUEST_BUCKETS,
        registry=reference,
    )
    observations = [
        ("/info", 200, 0.0004),
        ("/info", 200, 0.0005),  # on a bucket's bound: counted in it (le is inclusive)
        ("/info", 304, 0.003),
        ("/attestation", 503, 0.02),
        ("/attestation", 200, 20.0),  # beyond the last bound: +Inf only
    ]
    for route, status, seconds in observations:
        ours.observe_request(route, status, seconds)
        requests.labels(route, str(status)).inc()
        latency.labels(route).observe(seconds)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
        parsed = parse(generate_latest(registry).decode())
        return {
            key: value
            for key, value in parsed.items()
            if key[0].startswith(("oauth3_requests", "oauth3_request_duration"))
            and not key[0].endswith("_created")
        }

    expected = samples(reference)
    assert expected
    assert samples(ours.registry) == expected
