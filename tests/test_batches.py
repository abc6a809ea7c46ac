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
