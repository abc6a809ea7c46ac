"""Fresh attestation at HTTP speed: many clients' nonces in one quote (layout `oauth3/v2`).

Nonces that arrive while a quote is in flight join the next batch; a batch is quoted as soon as
the agent is free, so a lone request costs one quote and no wait. The quote's report_data is
SHA-256(/info) ‖ the Merkle root over the batch's distinct nonces, and each client gets its leaf
index, the batch size and its sibling path. A batch is bounded in size (beyond it: 503 at once)
and a client in how long it waits for its batch (beyond it: 504).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from oauth3.attestation.merkle import MerkleTree
from oauth3.attestation.report_data import LAYOUT_V2

from .agent import AgentQuote, AgentTimeoutError, AgentUnavailableError

# quote the 64 report_data bytes and return the agent's checked answer
QuoteFetcher = Callable[[bytes, str], Awaitable[AgentQuote]]


@dataclass(frozen=True, slots=True)
class BatchQuote:
    """One quoted batch: the tree over its nonces and the response body they all share."""

    tree: MerkleTree
    common: bytes  # the JSON object without its closing brace, serialised once
    agent: AgentQuote

    def body(self, nonce: bytes, index: int) -> bytes:
        """One client's /attestation body: the shared part, its nonce and its inclusion proof."""
        proof = orjson.dumps(
            {
                "leafIndex": index,
                "batchSize": self.tree.size,
                "path": [sibling.hex() for sibling in self.tree.path(index)],
            }
        )
        return b'%s,"nonce":"%s","merkle":%s}' % (self.common, nonce.hex().encode(), proof)


@dataclass(slots=True)
class _Batch:
    """Nonces gathered for the next quote and the futures of the requests waiting for it; the
    timer fails them all when the batch is not quoted within max_wait of its first nonce."""

    leaves: dict[bytes, int] = field(default_factory=dict)
    waiters: list[asyncio.Future[BatchQuote]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


def shared_body(answer: AgentQuote, report_data: bytes) -> bytes:
    """The part of a v2 /attestation body every client of a batch shares (no closing brace)."""
    document = orjson.dumps(
        {
            "layout": LAYOUT_V2,
            "quote": base64.b64encode(answer.quote).decode(),
            "eventLog": answer.event_log,
            "reportData": report_data.hex(),
            "vmConfig": answer.vm_config,
            "generatedAt": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
    )
    return document[:-1]


class NonceBatcher:
    """Quotes batches of nonces one after another; at most one batch quoting, one gathering.

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
        """Quote gathered batches back to back until none is waiting."""
        while self._gathering.leaves:
            batch, self._gathering = self._gathering, _Batch()
            outcome: BatchQuote | Exception
            try:
                outcome = await self._quote(list(batch.leaves), request_id)
            except Exception as exc:  # every waiter of this batch gets the same error
                outcome = exc
            except BaseException:
                self._settle(batch, AgentUnavailableError("the service is stopping", retry_after=1))
                raise
            self._settle(batch, outcome)

    def _settle(self, batch: _Batch, outcome: BatchQuote | Exception) -> None:
        """Answer the batch's waiters from the next loop turn on; the caller goes on at once
        (to request the next quote before any of these clients is written to)."""
        if batch.timer is not None:
            batch.timer.cancel()
        asyncio.get_running_loop().call_soon(_deliver, batch.waiters, outcome, 0)

    async def _quote(self, nonces: list[bytes], request_id: str) -> BatchQuote:
        tree = MerkleTree(nonces)
        report_data = self._digest + tree.root
        answer = await self._fetch(report_data, request_id)
        if self._observe is not None:
            self._observe(len(nonces))
        return BatchQuote(tree=tree, common=shared_body(answer, report_data), agent=answer)

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


DELIVERY_CHUNK = 32  # waiters woken per event-loop turn


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
