"""oauth3/v2 in the service: nonces arriving during a quote share the next, each with a proof."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from oauth3.attestation import parse_quote
from oauth3.attestation.merkle import MerkleTree, root_from_path
from oauth3.service.app import METRICS, create_app
from oauth3.service.batches import NonceBatcher
from oauth3.service.sidecar_client import (
    AgentBadAnswerError,
    AgentQuote,
    AgentTimeoutError,
    AgentUnavailableError,
)
from tests.fakes import Harness, problem

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
V2 = "layout=oauth3/v2"


@pytest.fixture
async def client(harness: Harness, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(harness.service_settings()))


async def attest(client: TestClient[Any, Any], nonce: bytes) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"/attestation?nonce={nonce.hex()}&{V2}")
    return response.status, orjson.loads(await response.read())


def proves(doc: dict[str, Any], nonce: bytes, info: bytes) -> bool:
    """The answer binds /info and, through its proof, this nonce; the quote carries it."""
    report_data = bytes.fromhex(doc["reportData"])
    proof = doc["merkle"]
    path = [bytes.fromhex(p) for p in proof["path"]]
    root = root_from_path(nonce, proof["leafIndex"], proof["batchSize"], path)
    quoted = parse_quote(base64.b64decode(doc["quote"])).report.report_data
    return (
        doc["layout"] == "oauth3/v2"
        and doc["nonce"] == nonce.hex()
        and report_data == hashlib.sha256(info).digest() + root
        and quoted == report_data
    )


async def test_a_lone_request_is_quoted_at_once_in_a_batch_of_one(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    info = await (await client.get("/info")).read()
    nonce = secrets.token_bytes(32)
    status, doc = await attest(client, nonce)
    assert status == 200, doc
    assert doc["merkle"] == {"leafIndex": 0, "batchSize": 1, "path": []}
    assert proves(doc, nonce, info)
    assert bytes.fromhex(doc["reportData"])[32:] == MerkleTree([nonce]).root != nonce


async def test_requests_during_a_quote_share_the_next_one(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    info = await (await client.get("/info")).read()
    assert (await client.get("/attestation")).status == 200  # the cached quote is made first
    harness.agent.delay = 0.2
    before = harness.agent.quote_calls()
    nonces = [secrets.token_bytes(32) for _ in range(40)]
    first = asyncio.ensure_future(attest(client, nonces[0]))
    await asyncio.sleep(0.05)  # the first batch (one nonce) is being quoted
    rest = await asyncio.gather(*(attest(client, n) for n in [*nonces[1:], nonces[1]]))
    answers = [await first, *rest]
    assert all(status == 200 for status, _ in answers)
    assert all(
        proves(doc, n, info) for (_, doc), n in zip(answers, [*nonces, nonces[1]], strict=True)
    )
    assert harness.agent.quote_calls() - before == 2
    sizes = sorted({doc["merkle"]["batchSize"] for _, doc in answers})
    assert sizes == [1, 39]  # the repeated nonce shares its leaf
    assert answers[1][1]["merkle"] == answers[-1][1]["merkle"]
    metrics = client.app[METRICS]
    assert metrics.batch_size._sum.get() == 40
    assert metrics.registry.get_sample_value("oauth3_quotes_total", {"outcome": "batched"}) == 41


async def test_v1_clients_keep_their_own_quote(client: TestClient[Any, Any]) -> None:
    nonce = "5a" * 32
    response = await client.get(f"/attestation?nonce={nonce}")
    doc = orjson.loads(await response.read())
    assert response.status == 200
    assert doc["layout"] == "oauth3/v1"
    assert "merkle" not in doc
    assert doc["reportData"].endswith(nonce)
    again = await client.get(f"/attestation?nonce={nonce}&layout=oauth3/v1")
    assert orjson.loads(await again.read())["layout"] == "oauth3/v1"


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (V2, "needs a nonce"),
        (f"nonce={'5a' * 32}&layout=oauth3/v3", "layout must be one of"),
        (f"nonce={'5a' * 32}&{V2}&{V2}", "more than once"),
        (f"nonce={'5a' * 32}&batch=1", "unknown query parameter 'batch'"),
    ],
)
async def test_bad_layout_requests_are_400(
    client: TestClient[Any, Any], query: str, detail: str
) -> None:
    response = await client.get(f"/attestation?{query}")
    assert response.status == 400
    assert detail in problem(await response.read())["detail"]


async def test_a_full_batch_is_refused_at_once(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(harness.service_settings(max_batch=3)))
    assert (await client.get("/attestation")).status == 200  # the cached quote is made first
    harness.agent.delay = 0.2
    first = asyncio.ensure_future(attest(client, secrets.token_bytes(32)))
    await asyncio.sleep(0.05)
    answers = await asyncio.gather(*(attest(client, secrets.token_bytes(32)) for _ in range(5)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 200, 503, 503]
    refused = next(doc for status, doc in answers if status == 503)
    assert refused["detail"] == "quote batch is full"
    assert (await first)[0] == 200


async def test_an_agent_failure_reaches_every_client_of_the_batch(
    client: TestClient[Any, Any], harness: Harness
) -> None:
    harness.agent.mode = "wrong_report_data"
    answers = await asyncio.gather(*(attest(client, secrets.token_bytes(32)) for _ in range(4)))
    assert {status for status, _ in answers} == {502}
    harness.agent.mode = "ok"
    status, _ = await attest(client, secrets.token_bytes(32))
    assert status == 200


async def test_a_batch_not_quoted_in_time_is_504(
    harness: Harness, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(harness.service_settings(batch_wait=0.2)))
    harness.agent.delay = 0.4
    status, doc = await attest(client, secrets.token_bytes(32))
    assert status == 504
    assert doc["detail"] == "the quote batch was not ready in time"


class RecordingAgent:
    """A quote fetcher for NonceBatcher alone: each request reaches the agent a few loop turns
    after the call (aiohttp writes the body from a task of its own), and each quote waits for
    the test to release it."""

    def __init__(self, turns_to_send: int = 0, agent_ms: float | None = None) -> None:
        self.turns_to_send = turns_to_send
        self.agent_ms = agent_ms  # what the sidecar's timing header reports, if anything
        self.requested: list[bytes] = []  # the report_data of each quote, in order
        self.release: list[asyncio.Future[None]] = []

    async def fetch(self, report_data: bytes, request_id: str) -> AgentQuote:
        for _ in range(self.turns_to_send):
            await asyncio.sleep(0)
        self.requested.append(report_data)
        gate = asyncio.get_running_loop().create_future()
        self.release.append(gate)
        await gate
        queue_ms = None if self.agent_ms is None else 0.0
        return AgentQuote(b"q", "[]", report_data, "{}", queue_ms, self.agent_ms)


def batcher(agent: RecordingAgent, **overrides: Any) -> NonceBatcher:
    options: dict[str, Any] = {"max_batch": 4096, "max_wait": 5.0, "retry_after": 1}
    return NonceBatcher(agent.fetch, bytes(32), **(options | overrides))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_answering_a_large_batch_does_not_hold_up_the_next_quote() -> None:
    agent = RecordingAgent(turns_to_send=3)
    nonces = batcher(agent)
    woken: list[int] = []  # quotes requested when each client of the large batch was woken

    async def client(nonce: bytes) -> None:
        await nonces.join(nonce, "r")
        woken.append(len(agent.requested))

    first = asyncio.ensure_future(nonces.join(bytes(32), "r"))
    await settle()  # quote 1 is in flight; 200 clients gather for quote 2
    large = [asyncio.ensure_future(client(n.to_bytes(32, "big"))) for n in range(1, 201)]
    await settle()
    agent.release[0].set_result(None)
    await first
    await settle()  # quote 2 is in flight; one client gathers for quote 3
    following = asyncio.ensure_future(nonces.join(b"\xff" * 32, "r"))
    await settle()
    agent.release[1].set_result(None)
    await asyncio.wait_for(asyncio.gather(*large), 1)
    assert len(woken) == 200
    assert woken[-1] == 3  # quote 3 was on its way before the last of the 200 was answered
    agent.release[2].set_result(None)
    quoted, index = await asyncio.wait_for(following, 1)
    assert (quoted.bodies.tree.size, index) == (1, 0)
    await nonces.close()


async def test_the_next_batch_waits_at_the_sidecar_not_here() -> None:
    agent = RecordingAgent(agent_ms=400.0)  # the sidecar reports 400 ms of agent time per quote
    nonces = batcher(agent)
    first = asyncio.ensure_future(nonces.join(b"\x01" * 32, "r"))
    await settle()
    agent.release[0].set_result(None)
    await first  # now the batcher knows how long the agent takes
    second = asyncio.ensure_future(nonces.join(b"\x02" * 32, "r"))
    await settle()
    third = asyncio.ensure_future(nonces.join(b"\x03" * 32, "r"))
    await asyncio.sleep(0.1)
    assert len(agent.requested) == 2  # the agent is busy with quote 2 for 300 ms more
    await asyncio.sleep(0.4)
    assert len(agent.requested) == 3  # quote 3 went out before quote 2 came back
    agent.release[1].set_exception(AgentBadAnswerError("agent answered HTTP 500"))
    with pytest.raises(AgentBadAnswerError):
        await asyncio.wait_for(second, 1)
    agent.release[2].set_result(None)  # a failed quote does not spoil the one after it
    quoted, index = await asyncio.wait_for(third, 1)
    assert quoted.agent.report_data[32:] == MerkleTree([b"\x03" * 32]).root
    assert index == 0
    await nonces.close()


async def test_a_batch_that_waits_too_long_is_answered_504_and_never_quoted() -> None:
    agent = RecordingAgent()
    nonces = batcher(agent, max_wait=0.1)
    first = asyncio.ensure_future(nonces.join(b"\x01" * 32, "r"))
    await settle()  # quote 1 is in flight and never released
    late = asyncio.ensure_future(nonces.join(b"\x02" * 32, "r"))
    for waiter in (first, late):
        with pytest.raises(AgentTimeoutError, match="not ready in time"):
            await asyncio.wait_for(waiter, 1)
    again = asyncio.ensure_future(nonces.join(b"\x03" * 32, "r"))
    agent.release[0].set_result(None)  # the stuck quote ends; nobody waits for its batch now
    await settle()
    agent.release[1].set_result(None)
    quoted, index = await asyncio.wait_for(again, 1)
    assert (quoted.bodies.tree.size, index) == (1, 0)
    assert [r[32:] for r in agent.requested] == [
        MerkleTree([b"\x01" * 32]).root,
        MerkleTree([b"\x03" * 32]).root,  # the expired batch of b"\x02" was dropped
    ]
    await nonces.close()


async def test_a_client_that_goes_away_leaves_its_batch_intact() -> None:
    agent = RecordingAgent()
    nonces = batcher(agent)
    stays = asyncio.ensure_future(nonces.join(b"\x01" * 32, "r"))
    leaves = asyncio.ensure_future(nonces.join(b"\x02" * 32, "r"))
    await settle()
    leaves.cancel()
    await settle()
    agent.release[0].set_result(None)
    quoted, index = await asyncio.wait_for(stays, 1)
    assert (quoted.bodies.tree.size, index) == (2, 0)
    assert leaves.cancelled()
    await nonces.close()


async def test_closing_answers_the_gathering_batch_503() -> None:
    agent = RecordingAgent()
    nonces = batcher(agent)
    quoting = asyncio.ensure_future(nonces.join(b"\x01" * 32, "r"))
    await settle()
    gathering = asyncio.ensure_future(nonces.join(b"\x02" * 32, "r"))
    await settle()
    await nonces.close()
    for waiter in (quoting, gathering):
        with pytest.raises(AgentUnavailableError, match="stopping"):
            await asyncio.wait_for(waiter, 1)


async def test_closing_answers_both_batches_at_the_sidecar_503() -> None:
    agent = RecordingAgent(agent_ms=100.0)
    nonces = batcher(agent)
    warm = asyncio.ensure_future(nonces.join(b"\x01" * 32, "r"))
    await settle()
    agent.release[0].set_result(None)
    await warm
    quoting = asyncio.ensure_future(nonces.join(b"\x02" * 32, "r"))
    await settle()
    queued = asyncio.ensure_future(nonces.join(b"\x03" * 32, "r"))
    await asyncio.sleep(0.2)
    assert len(agent.requested) == 3  # two quotes outstanding
    await nonces.close()
    for waiter in (quoting, queued):
        with pytest.raises(AgentUnavailableError, match="stopping"):
            await asyncio.wait_for(waiter, 1)
