"""Bounded load on loopback against the real three-process stack (run by `make load`):
the cheap paths take 10 000 requests without a single non-2xx, and a nonce flood far beyond
the quote queue gets only 200s and 503s while /info keeps answering and memory stays bounded."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.stack import RunningStack, running_stack

pytestmark = pytest.mark.load

REQUESTS = 10_000
CONCURRENCY = 100
FLOOD_REQUESTS = 1_500
FLOOD_CONCURRENCY = 200
RSS_BOUND_MIB = 150


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    # quotes cost what they cost on real hardware (about 40 ms, one at a time)
    with running_stack(OAUTH3_SIM_QUOTE_LATENCY_MS="39") as started:
        yield started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def hammer(url: str, total: int, concurrency: int) -> tuple[Counter[int], float]:
    statuses: Counter[int] = Counter()
    remaining = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in remaining:
                async with session.get(url) as response:
                    await response.read()
                    statuses[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, time.perf_counter() - started


@pytest.mark.parametrize("path", ["/info", "/attestation"])
async def test_cheap_paths_take_10k_requests_at_concurrency_100(
    stack: RunningStack, path: str
) -> None:
    statuses, seconds = await asyncio.wait_for(
        hammer(f"{stack.base_url}{path}", REQUESTS, CONCURRENCY), timeout=120
    )
    rate = REQUESTS / seconds
    print(f"\n{path}: {REQUESTS} requests in {seconds:.1f} s ({rate:.0f}/s): {dict(statuses)}")
    assert statuses == Counter({200: REQUESTS})


async def test_nonce_flood_gets_only_200_and_503_and_info_keeps_working(
    stack: RunningStack,
) -> None:
    statuses: Counter[int] = Counter()
    missing_retry_after = 0
    rejected_ms: list[float] = []
    info_statuses: Counter[int] = Counter()
    done = asyncio.Event()
    remaining = iter(range(FLOOD_REQUESTS))
    connector = aiohttp.TCPConnector(limit=FLOOD_CONCURRENCY + 10)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def flooder() -> None:
            nonlocal missing_retry_after
            for _ in remaining:
                url = f"{stack.base_url}/attestation?nonce={secrets.token_hex(32)}"
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    statuses[response.status] += 1
                    if response.status == 503:
                        rejected_ms.append((time.perf_counter() - started) * 1000)
                        missing_retry_after += "Retry-After" not in response.headers

        async def info_poller() -> None:
            while not done.is_set():
                async with session.get(f"{stack.base_url}/info") as response:
                    await response.read()
                    info_statuses[response.status] += 1
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(info_poller())
        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(flooder() for _ in range(FLOOD_CONCURRENCY))), timeout=120
        )
        seconds = time.perf_counter() - started
        done.set()
        await poller
    rejected_ms.sort()
    p99 = rejected_ms[int(len(rejected_ms) * 0.99) - 1] if rejected_ms else 0.0
    service_rss = peak_rss_mib(stack.child("service").process.pid)
    sidecar_rss = peak_rss_mib(stack.child("sidecar").process.pid)
    print(
        f"\nnonce flood: {FLOOD_REQUESTS} requests at concurrency {FLOOD_CONCURRENCY} in "
        f"{seconds:.1f} s: {dict(statuses)}; 503 p99 {p99:.1f} ms; /info during the flood: "
        f"{dict(info_statuses)}; peak RSS service {service_rss:.1f} MiB, "
        f"sidecar {sidecar_rss:.1f} MiB"
    )
    assert set(statuses) <= {200, 503}
    assert statuses[200] > 0
    assert statuses[503] > 0
    assert missing_retry_after == 0
    assert set(info_statuses) == {200}
    assert info_statuses[200] > 10
    assert service_rss < RSS_BOUND_MIB
    assert sidecar_rss < RSS_BOUND_MIB
