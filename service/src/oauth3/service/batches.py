"""Fresh attestation at HTTP speed: many clients' nonces in one quote (layout `oauth3/v2`).

Nonces that arrive while a quote is in flight join the next batch; a batch is quoted as soon as
the agent is free (sent to the sidecar's queue just before), so a lone request costs one quote
and no wait. The quote's report_data is
SHA-256(/info) ‖ the Merkle root over the batch's distinct nonces, and each client gets its leaf
index, the batch size and its sibling path. A batch is bounded in size (beyond it: 503 at once)
and in how long it may wait for its quote (beyond it: 504).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from oauth3.attestation.merkle import MerkleTree
from oauth3.attestation.report_data import batch_report_data_for
from oauth3.attestation.response import BatchBodies

from .sidecar_client import AgentQuote, AgentTimeoutError, AgentUnavailableError

# quote the 64 report_data bytes and return the agent's checked answer
QuoteFetcher = Callable[[bytes, str], Awaitable[AgentQuote]]


@dataclass(frozen=True, slots=True)
class BatchQuote:
    """One quoted batch: its clients' bodies and the agent's answer."""

    bodies: BatchBodies
    agent: AgentQuote


@dataclass(slots=True)
class _Batch:
    """Nonces gathered for the next quote and the futures of the requests waiting for it; the
    timer fails them all when the batch is not quoted within max_wait of its first nonce."""

    leaves: dict[bytes, int] = field(default_factory=dict)
    waiters: list[asyncio.Future[BatchQuote]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Quoting:
    """A batch sent to be quoted: when, and when the agent starts on it (loop time; estimated
    until the quote before it has ended)."""

    batch: _Batch
    task: asyncio.Task[BatchQuote]
    sent_at: float
    starts_at: float


def _retrieve(task: asyncio.Task[BatchQuote]) -> None:
    if not task.cancelled():
        task.exception()


# How long before the agent is expected to be free the next batch is sent: enough for the
# request to reach the sidecar's queue. On the bench machine 3 ms beat 2, 4, 5, 8 and 12 ms
# (B7): less leaves the agent idle, more moves late nonces to the batch after.
LEAD_S = 0.003


class NonceBatcher:
    """Quotes batches of nonces one after another: at most one batch at the agent, one queued at
    the sidecar behind it, one gathering.

    The next batch's quote is requested before the clients of the last one are answered, and
    they are woken DELIVERY_CHUNK at a time, one chunk per event-loop turn: answering a batch
    of hundreds never holds up the quote pipeline (the agent is the scarce resource)."""

    def __init__(
        self,
        fetch: QuoteFetcher,
        info_digest: bytes,
        *,
        max_batch: int,
        max_wait: float,
        retry_after: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._digest = info_digest
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._retry_after = retry_after
        self._observe = observe
        self._gathering = _Batch()
        self._runner: asyncio.Task[None] | None = None
        self._agent_s: float | None = None  # the agent's time for the last quote

    async def join(self, nonce: bytes, request_id: str) -> tuple[BatchQuote, int]:
        """Wait for the batch that quotes `nonce`; its quote and this nonce's leaf index.
        AgentUnavailableError (503) when the gathering batch is full, AgentTimeoutError (504)
        when it is not quoted within max_wait of its first nonce, any AgentError of the quote."""
        batch = self._gathering
        index = batch.leaves.get(nonce)
        if index is None:
            if len(batch.leaves) >= self._max_batch:
                raise AgentUnavailableError("quote batch is full", retry_after=self._retry_after)
            index = batch.leaves[nonce] = len(batch.leaves)
        loop = asyncio.get_running_loop()
        if batch.timer is None:
            batch.timer = loop.call_later(self._max_wait, self._expire, batch)
        waiter: asyncio.Future[BatchQuote] = loop.create_future()
        batch.waiters.append(waiter)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(request_id), name="nonce-batches")
        return await waiter, index  # cancelling this request cancels only its own future

    def _expire(self, batch: _Batch) -> None:
        """max_wait has passed since the batch's first nonce: its clients get 504 now. A batch
        still gathering is dropped unquoted; new nonces start a fresh one."""
        if batch is self._gathering:
            self._gathering = _Batch()
        late = AgentTimeoutError(
            "the quote batch was not ready in time", retry_after=self._retry_after
        )
        _deliver(batch.waiters, late, 0)

    async def _run(self, request_id: str) -> None:
        """Quote gathered batches back to back until none is waiting.

        While a quote is at the agent, the gathering batch is sent to the sidecar LEAD_S before
        the agent is expected to be free (from the agent time of the last quote): it waits in the
        sidecar's queue and the agent goes straight on to it, instead of idling while the answer
        travels back and the next request travels out (a few ms per quote, more when this loop
        is busy answering clients). Nonces arriving in those last LEAD_S join the batch after."""
        loop = asyncio.get_running_loop()
        current: _Quoting | None = None
        following: _Quoting | None = None
        try:
            while current is not None or self._gathering.leaves:
                if current is None:
                    current = self._send(request_id, loop.time())
                if self._agent_s is not None:
                    free_at = current.starts_at + self._agent_s
                    await asyncio.wait([current.task], timeout=free_at - LEAD_S - loop.time())
                    if not current.task.done() and self._gathering.leaves:
                        following = self._send(request_id, free_at)
                outcome: BatchQuote | Exception
                ended = None
                try:
                    outcome = await current.task
                except Exception as exc:  # every waiter of this batch gets the same error
                    outcome = exc
                else:
                    ended = self._learn(outcome.agent, current, loop.time())
                self._settle(current.batch, outcome)
                if following is not None:  # the agent went on to it when this quote ended
                    following.starts_at = max(following.sent_at, ended or loop.time())
                current, following = following, None
        except BaseException:
            stopping = AgentUnavailableError("the service is stopping", retry_after=1)
            for quoting in (current, following):
                if quoting is not None:
                    quoting.task.cancel()
                    self._settle(quoting.batch, stopping)
            raise

    def _learn(self, agent: AgentQuote, quoting: _Quoting, now: float) -> float:
        """Note how long the agent took for this quote; when it ended (loop time). From the
        sidecar's timing headers, which a busy loop does not skew; else from the round trip."""
        if agent.agent_ms is None or agent.queue_ms is None:
            self._agent_s = now - quoting.starts_at
            return now
        self._agent_s = agent.agent_ms / 1000
        return quoting.sent_at + (agent.queue_ms + agent.agent_ms) / 1000

    def _send(self, request_id: str, starts_at: float) -> _Quoting:
        """Close the gathering batch and send it to be quoted; the agent should start on it at
        `starts_at` (loop time) or when it arrives, whichever is later."""
        batch, self._gathering = self._gathering, _Batch()
        task = asyncio.create_task(self._quote(list(batch.leaves), request_id))
        task.add_done_callback(_retrieve)  # read here too when the runner was cancelled first
        sent_at = asyncio.get_running_loop().time()
        return _Quoting(batch, task, sent_at, max(sent_at, starts_at))

    def _settle(self, batch: _Batch, outcome: BatchQuote | Exception) -> None:
        """Answer the batch's waiters from the next loop turn on; the caller goes on at once
        (to request the next quote before any of these clients is written to)."""
        if batch.timer is not None:
            batch.timer.cancel()
        asyncio.get_running_loop().call_soon(_deliver, batch.waiters, outcome, 0)

    async def _quote(self, nonces: list[bytes], request_id: str) -> BatchQuote:
        tree = MerkleTree(nonces)
        report_data = batch_report_data_for(self._digest, tree.root)
        answer = await self._fetch(report_data, request_id)
        if self._observe is not None:
            self._observe(len(nonces))
        return BatchQuote(BatchBodies.for_batch(answer.evidence, tree, report_data), answer)

    async def close(self) -> None:
        """Stop quoting: cancel the runner; waiters of its batch and of the gathering one get
        a 503."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        gathering, self._gathering = self._gathering, _Batch()
        if gathering.timer is not None:
            gathering.timer.cancel()
        _deliver(
            gathering.waiters, AgentUnavailableError("the service is stopping", retry_after=1), 0
        )


# Waiters woken per event-loop turn: small enough that the quote pipeline and new requests get
# a turn every ~1 ms while a batch is answered; 8 beat 1, 4, 16, 32 and 64 in B7.
DELIVERY_CHUNK = 8


def _deliver(
    waiters: list[asyncio.Future[BatchQuote]], outcome: BatchQuote | Exception, start: int
) -> None:
    """Resolve waiters[start:start + DELIVERY_CHUNK] and schedule the rest for the next turn.
    Waiters already done (timed out, cancelled) are skipped."""
    end = start + DELIVERY_CHUNK
    for waiter in waiters[start:end]:
        if waiter.done():
            continue
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
    if end < len(waiters):
        asyncio.get_running_loop().call_soon(_deliver, waiters, outcome, end)
