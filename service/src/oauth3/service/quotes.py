"""Quotes bound to /info: a background-refreshed cached quote, and fresh coalesced nonce quotes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from oauth3.attestation import AttestationError, parse_quote, report_data_for
from oauth3.attestation.response import v1_body

from .batches import NonceBatcher
from .metrics import ServiceMetrics
from .sidecar_client import (
    AgentBadAnswerError,
    AgentError,
    AgentQuote,
    AgentUnavailableError,
    SidecarClient,
)

log = structlog.get_logger("service")


@dataclass(frozen=True, slots=True)
class ServedQuote:
    """A checked quote with its response body serialised once."""

    body: bytes
    created: float  # time.monotonic() when the agent answered
    agent: AgentQuote


@dataclass(frozen=True, slots=True)
class QuoteOutcome:
    """What a request got: the quote and how (cached, fresh, coalesced)."""

    served: ServedQuote
    source: str


def check_binding(answer: AgentQuote, expected: bytes) -> None:
    """Refuse any quote whose report_data is not exactly the 64 bytes we asked for."""
    try:
        quote = parse_quote(answer.quote)
    except AttestationError as exc:
        raise AgentBadAnswerError(
            "agent returned an unparsable quote", log_detail=str(exc)
        ) from None
    if quote.report.report_data != expected:
        raise AgentBadAnswerError(
            "quote does not carry the requested report_data",
            log_detail=f"quote has {quote.report.report_data.hex()}, expected {expected.hex()}",
        )
    if answer.report_data and answer.report_data != expected:
        raise AgentBadAnswerError(
            "agent's report_data field differs from the request",
            log_detail=f"field has {answer.report_data.hex()}",
        )


class QuoteProvider:
    """Gets quotes bound to one /info digest: cached (no nonce) or fresh (nonce), never unbound."""

    def __init__(
        self,
        client: SidecarClient,
        info_digest: bytes,
        *,
        refresh_interval: float,
        max_age: float,
        retry_after: int,
        max_pending: int = 17,
        max_batch: int = 4096,
        batch_wait: float = 30.0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._digest = info_digest
        self._refresh_interval = refresh_interval
        self._max_age = max_age
        self._retry_after = retry_after
        self._max_pending = max_pending
        self._cached: ServedQuote | None = None
        self._cached_outcome: QuoteOutcome | None = None  # the same, as cached() returns it
        self._inflight: dict[bytes | None, asyncio.Task[ServedQuote]] = {}
        self._batcher = NonceBatcher(
            self.checked_quote,
            info_digest,
            max_batch=max_batch,
            max_wait=batch_wait,
            retry_after=retry_after,
            observe=metrics.batch_size.observe if metrics is not None else None,
        )

    @property
    def cache_age(self) -> float | None:
        """Seconds since the cached quote was made, or None when there is none."""
        return None if self._cached is None else time.monotonic() - self._cached.created

    async def checked_quote(self, report_data: bytes, request_id: str) -> AgentQuote:
        """A quote over exactly these 64 bytes, its binding checked (never served otherwise)."""
        started = time.perf_counter()
        answer = await self._client.get_quote(report_data, request_id)
        if self._metrics is not None:
            self._metrics.observe_agent_call(
                time.perf_counter() - started, answer.agent_ms, answer.queue_ms
            )
        try:
            check_binding(answer, report_data)
        except AgentBadAnswerError as exc:
            log.error("quote_binding_refused", reason=exc.reason, detail=exc.log_detail)
            raise
        return answer

    async def _fetch(self, nonce: bytes | None, request_id: str) -> ServedQuote:
        report_data = report_data_for(self._digest, nonce)
        answer = await self.checked_quote(report_data, request_id)
        return ServedQuote(
            body=v1_body(answer.evidence, report_data, nonce),
            created=time.monotonic(),
            agent=answer,
        )

    async def _shared(
        self, key: bytes | None, make: Callable[[], Awaitable[ServedQuote]]
    ) -> tuple[ServedQuote, bool]:
        """Run `make` once per key at a time; concurrent callers with the same key share it."""
        task = self._inflight.get(key)
        coalesced = task is not None
        if task is None:
            task = asyncio.ensure_future(make())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task), coalesced

    def _forget(self, key: bytes | None, task: asyncio.Task[ServedQuote]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away

    async def refresh(self, request_id: str) -> ServedQuote:
        """Fetch a new cached (nonce-less) quote now, sharing any refresh already running."""

        async def make() -> ServedQuote:
            served = await self._fetch(None, request_id)
            self._cached = served
            self._cached_outcome = QuoteOutcome(served, "cached")
            return served

        served, _ = await self._shared(None, make)
        return served

    def cached_now(self) -> QuoteOutcome | None:
        """The cached quote while younger than max_age, else None (then await cached())."""
        current = self._cached_outcome
        if current is not None and time.monotonic() - current.served.created <= self._max_age:
            return current
        return None

    async def cached(self, request_id: str) -> QuoteOutcome:
        """The cached quote while younger than max_age; otherwise refresh now or fail (503)."""
        current = self._cached
        if current is not None and time.monotonic() - current.created <= self._max_age:
            return QuoteOutcome(current, "cached")
        try:
            return QuoteOutcome(await self.refresh(request_id), "refreshed")
        except AgentError as exc:
            if isinstance(exc, AgentUnavailableError | AgentBadAnswerError) and current is not None:
                raise AgentUnavailableError(
                    "cached quote expired and cannot be refreshed", retry_after=self._retry_after
                ) from exc
            raise

    async def fresh(self, nonce: bytes, request_id: str) -> QuoteOutcome:
        """A new quote over this nonce; identical nonces in flight share one agent call.
        Beyond `max_pending` distinct quotes in flight the answer is 503 at once, without a
        round trip to a sidecar whose queue would refuse it anyway."""
        if nonce not in self._inflight and len(self._inflight) >= self._max_pending:
            raise AgentUnavailableError("quote queue is full", retry_after=self._retry_after)
        served, coalesced = await self._shared(nonce, lambda: self._fetch(nonce, request_id))
        return QuoteOutcome(served, "coalesced" if coalesced else "fresh")

    async def batched(self, nonce: bytes, request_id: str) -> QuoteOutcome:
        """An oauth3/v2 quote: this nonce joins the next batch; the body carries its proof."""
        quoted, index = await self._batcher.join(nonce, request_id)
        served = ServedQuote(quoted.bodies.body(nonce, index), time.monotonic(), quoted.agent)
        return QuoteOutcome(served, "batched")

    async def close(self) -> None:
        """Stop the batch quoter (the refresher is the app's own task)."""
        await self._batcher.close()

    async def run_refresher(self) -> None:
        """Keep the cached quote fresh forever; failures back off and keep the last good quote."""
        delay = min(1.0, self._refresh_interval)
        while True:
            try:
                await self.refresh("refresher")
            except AgentError as exc:
                log.warning("quote_refresh_failed", reason=exc.reason, detail=exc.log_detail)
                if self._metrics is not None:
                    self._metrics.cache_refreshes.labels("error").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._refresh_interval)
                continue
            if self._metrics is not None:
                self._metrics.cache_refreshes.labels("ok").inc()
            delay = min(1.0, self._refresh_interval)
            await asyncio.sleep(self._refresh_interval)
