"""A closed-loop load generator over aiohttp that keeps every response's status and latency."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Samples:
    """Every completed request's status and latency (s), plus timeouts and connection errors."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    elapsed: float = 0.0

    def latencies_of(self, status: int) -> list[float]:
        """Latencies of the responses with this status."""
        return [t for s, t in zip(self.statuses, self.latencies, strict=True) if s == status]

    def rate(self, status: int | None = None) -> float:
        """Responses per second (of one status, or all)."""
        count = len(self.statuses) if status is None else self.statuses.count(status)
        return count / self.elapsed if self.elapsed else 0.0


async def closed_loop(
    send: Callable[[], Awaitable[int]], *, concurrency: int, duration: float
) -> Samples:
    """`concurrency` workers each await send() back to back until `duration` has passed."""
    samples = Samples()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status = await send()
            except TimeoutError:
                samples.timeouts += 1
                continue
            except aiohttp.ClientError:
                samples.errors += 1
                continue
            samples.statuses.append(status)
            samples.latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.elapsed = time.perf_counter() - began
    return samples


def getter(
    session: aiohttp.ClientSession, url_for: Callable[[], str]
) -> Callable[[], Awaitable[int]]:
    """A send() for closed_loop: GET url_for(), read the body, return the status."""

    async def send() -> int:
        async with session.get(url_for()) as response:
            await response.read()
            return response.status

    return send
