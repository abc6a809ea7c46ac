"""oauth3/v2 end to end: many oauth3-verify runs at once against the real stack share few quotes,
and a man in the middle who edits an inclusion proof is caught by the nonce step."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from oauth3.verifier.cli import run
from tests.stack import RunningStack, collateral, free_port, policy, running_stack, serving
from tests.verifycli import step, verify

CLIENTS = 200
QUOTE_LATENCY_MS = 39


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    metrics_port = free_port()
    with running_stack(
        OAUTH3_SIM_QUOTE_LATENCY_MS=str(QUOTE_LATENCY_MS), OAUTH3_METRICS_PORT=str(metrics_port)
    ) as started:
        started.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
        yield started


def args_for(stack: RunningStack) -> list[str]:
    return [stack.base_url, "--allow-simulated", *policy(stack), *collateral(stack)]


async def counters(stack: RunningStack) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack.metrics_url) as response,  # type: ignore[attr-defined]
    ):
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("oauth3_agent_call_seconds_count", "oauth3_quote_batch_size_count"):
                found[sample.name] = sample.value
            if sample.name == "oauth3_quote_batch_size_sum":
                found[sample.name] = sample.value
    return found


def verify_once(args: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = run([*args, "--json"], out)
    return code, json.loads(out.getvalue())


async def test_many_concurrent_verifications_share_few_quotes(stack: RunningStack) -> None:
    before = await counters(stack)
    args = args_for(stack)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, verify_once, args) for _ in range(CLIENTS))
        )
    after = await counters(stack)
    codes = [code for code, _ in results]
    assert codes == [0] * CLIENTS, [r["steps"] for c, r in results if c][:1]
    assert all(step(report, "nonce")["details"]["layout"] == "oauth3/v2" for _, report in results)
    quotes = after["oauth3_agent_call_seconds_count"] - before["oauth3_agent_call_seconds_count"]
    batches = after["oauth3_quote_batch_size_count"] - before.get(
        "oauth3_quote_batch_size_count", 0
    )
    batched = after["oauth3_quote_batch_size_sum"] - before.get("oauth3_quote_batch_size_sum", 0)
    assert batched == CLIENTS
    assert 1 <= batches <= quotes < CLIENTS
    print(f"{CLIENTS} verifications, {quotes:.0f} agent quotes, {batches:.0f} batches")
    sizes = {step(report, "nonce")["details"]["batch_size"] for _, report in results}
    assert max(sizes) > 1


@asynccontextmanager
async def editing(stack: RunningStack, edit: Any) -> AsyncIterator[str]:
    """A man in the middle that puts each nonce into a batch of four (a quote in flight, then
    three companions) and rewrites the inclusion proof of the answer it passes on."""

    async def attest(session: aiohttp.ClientSession, nonce: str) -> bytes:
        url = f"{stack.base_url}/attestation?nonce={nonce}&layout=oauth3/v2"
        async with session.get(url) as upstream:
            assert upstream.status == 200
            return await upstream.read()

    async def forward(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session:
            if request.path != "/attestation":
                async with session.get(f"{stack.base_url}{request.path_qs}") as upstream:
                    return web.Response(body=await upstream.read(), content_type="application/json")
            asked = request.query["nonce"] if edit is not _another_nonce else secrets.token_hex(32)
            # the grouping rests on timing (a loaded machine can start the blocker's quote late),
            # so a batch that did not come out as four is drawn again, a bounded number of times
            for _ in range(5):
                blocker = asyncio.ensure_future(attest(session, secrets.token_hex(32)))
                await asyncio.sleep(QUOTE_LATENCY_MS / 4000)  # its quote is now in flight
                answers = await asyncio.gather(
                    attest(session, asked),
                    *(attest(session, secrets.token_hex(32)) for _ in range(3)),
                )
                await blocker
                doc = orjson.loads(answers[0])
                if doc["merkle"]["batchSize"] == 4:
                    break
        assert doc["merkle"]["batchSize"] == 4, doc["merkle"]
        edit(doc)
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async with serving(forward) as url:
        yield url


def _untouched(doc: dict[str, Any]) -> None:
    """The honest proof, passed on as it is (the control case)."""


def _another_nonce(doc: dict[str, Any]) -> None:
    """The answer for a nonce the man in the middle chose: a path for another nonce."""


def _swapped_siblings(doc: dict[str, Any]) -> None:
    doc["merkle"]["path"] = doc["merkle"]["path"][::-1]


def _wrong_index(doc: dict[str, Any]) -> None:
    doc["merkle"]["leafIndex"] ^= 1


def _batch_size(doc: dict[str, Any]) -> None:
    """A size the path cannot fit: eight leaves need a longer path than four."""
    doc["merkle"]["batchSize"] = 8


def _a_node_as_the_leaf(doc: dict[str, Any]) -> None:
    """One level dropped: the leaf's parent would stand where the leaf is."""
    proof = doc["merkle"]
    proof["path"] = proof["path"][1:]
    proof["leafIndex"] //= 2
    proof["batchSize"] = 2


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (_untouched, 0),
        (_another_nonce, 14),
        (_swapped_siblings, 14),
        (_wrong_index, 14),
        (_batch_size, 14),
        (_a_node_as_the_leaf, 14),
    ],
)
async def test_an_edited_inclusion_proof_fails_the_nonce_step(
    stack: RunningStack, edit: Any, code: int
) -> None:
    async with editing(stack, edit) as url:
        exit_code, report = await verify([url, *args_for(stack)[1:]])
    assert exit_code == code, report
    nonce = step(report, "nonce")
    assert nonce["details"]["batch_size"] in (2, 4, 8)
    assert (nonce["ok"] is True) == (code == 0)
