"""The service's /attestation query parser against yarl's and urllib's readings, with hostile
queries: percent-encodings, duplicates, empty names, huge values, bytes that are not UTF-8.
Each case hypothesis found is kept below as a plain regression test."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import orjson
import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.service.app import create_app
from oauth3.service.query import QueryError, parse_attestation_query, query_pairs
from tests.fakes import Harness, problem

NONCE = "5a" * 32
HOSTILE = "abnoce=&/%+;#._~-2Z\x00\x7f\u202eé"


def urllib_strict(raw: str) -> list[tuple[str, str]] | None:
    """urllib's pairs, or None where a percent-encoding is not UTF-8."""
    try:
        return parse_qsl(raw, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return None


def ours(raw: str) -> list[tuple[str, str]] | None:
    try:
        return query_pairs(raw)
    except QueryError:
        return None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abnoce=&/%+;._~-2Z", max_size=40))
def test_agrees_with_yarl_and_urllib_on_ascii_queries(raw: str) -> None:
    expected = urllib_strict(raw)
    assert ours(raw) == expected
    if expected is not None:
        assert expected == list(make_mocked_request("GET", f"/attestation?{raw}").query.items())


percent_byte = st.integers(0, 255).map(lambda byte: f"%{byte:02X}")
raw_query = st.lists(
    st.one_of(
        st.sampled_from(["nonce", "layout", "=", "&", "+", ";", "%", "5a", "oauth3/v2"]),
        percent_byte,
    ),
    max_size=30,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(raw_query)
def test_percent_encodings_decode_as_urllib_strictly_does(raw: str) -> None:
    """yarl and urllib turn bytes that are not UTF-8 into U+FFFD; we refuse them instead."""
    expected = urllib_strict(raw)
    assert ours(raw) == expected
    if expected is not None:
        assert expected == list(make_mocked_request("GET", f"/attestation?{raw}").query.items())
    else:
        assert "\ufffd" in "".join(n + v for n, v in parse_qsl(raw, keep_blank_values=True))


pairs = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=70)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(pairs, st.booleans())
def test_any_encoded_pairs_decode_back_exactly(
    given_pairs: list[tuple[str, str]], plus: bool
) -> None:
    encode = quote_plus if plus else quote
    raw = "&".join(
        f"{encode(name, safe='')}={encode(value, safe='')}" for name, value in given_pairs
    )
    assert query_pairs(raw) == given_pairs


@settings(max_examples=200, deadline=None)
@given(st.one_of(raw_query, st.text(alphabet=HOSTILE, max_size=60)))
def test_only_one_well_formed_nonce_and_layout_ever_pass(raw: str) -> None:
    try:
        query = parse_attestation_query(raw)
    except QueryError as refused:
        refusal = str(refused)
    else:
        refusal = ""
    if refusal:
        assert refusal.isprintable()
        return
    decoded = urllib_strict(raw)
    assert decoded is not None
    names = [name for name, _ in decoded]
    assert set(names) <= {"nonce", "layout"}
    assert names.count("nonce") <= 1
    assert names.count("layout") <= 1
    values = dict(decoded)
    assert query.nonce == (bytes.fromhex(values["nonce"]) if "nonce" in values else None)
    assert query.layout == values.get("layout", "oauth3/v1")


# ---------------------------------------------------------------- regression cases, over HTTP


@pytest.fixture
async def client(harness: Harness, aiohttp_client: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(harness.service_settings(), app_version="9.9.9"))


async def raw_get(client: TestClient[Any, Any], target: bytes) -> tuple[int, bytes]:
    """Send one request line byte for byte (no client-side re-encoding); status and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    ("target", "message"),
    [
        # found by hypothesis: yarl and urllib read %FF as U+FFFD, so two queries read the same
        (b"/attestation?nonce=%FF", "not UTF-8"),
        (b"/attestation?%C3=1", "not UTF-8"),
        (b"/attestation?layout=oauth3/v2%ED%A0%80&nonce=" + NONCE.encode(), "not UTF-8"),
        # a huge name is not echoed back whole; control characters are escaped
        (b"/attestation?" + b"x" * 7000 + b"=1", "'" + "x" * 32 + "'… (7000 characters)"),
        (b"/attestation?%00%1B%E2%80%AE=1", r"'\x00\x1b\u202e'"),
        (b"/attestation?=" + NONCE.encode(), "unknown query parameter ''"),
        (b"/attestation?nonce=" + NONCE.encode() + b"&%6Eonce=" + NONCE.encode(), "more than once"),
        (
            b"/attestation?nonce=" + NONCE.encode() + b"&layout=oauth3/v1&layout=oauth3/v1",
            "layout was given more than once",
        ),
        (b"/attestation?nonce=" + b"5a" * 3000, "64 hex characters"),
        (b"/attestation?nonce=%205a" + NONCE[4:].encode() + b"%20", "non-hex character ' '"),
        (b"/attestation?layout=oauth3/v2", "needs a nonce"),
    ],
)
async def test_hostile_queries_get_a_400_problem_and_never_reach_the_agent(
    client: TestClient[Any, Any], harness: Harness, target: bytes, message: str
) -> None:
    await raw_get(client, b"/attestation")  # let the start-up refresh settle
    before = harness.agent.quote_calls()
    status, body = await raw_get(client, target)
    assert status == 400
    detail = problem(body)["detail"]
    assert message in detail
    assert len(detail) < 200
    assert harness.agent.quote_calls() == before


@pytest.mark.parametrize(
    "target",
    [
        b"/attestation?%6Eonce=" + NONCE.encode(),  # RFC 3986: an encoded unreserved char is itself
        b"/attestation?nonce=" + NONCE.upper().encode() + b"&&&",
        b"/attestation?" + b"&" * 4000 + b"nonce=" + NONCE.encode(),
        b"/attestation?layout=oauth3%2Fv2&nonce=" + NONCE.encode(),
    ],
)
async def test_equivalent_spellings_of_a_good_query_are_answered(
    client: TestClient[Any, Any], target: bytes
) -> None:
    status, body = await raw_get(client, target)
    assert status == 200, body
    assert orjson.loads(body)["nonce"] == NONCE


@pytest.mark.parametrize(
    "target",
    [
        b"/attestation?nonce=\xff" + NONCE[2:].encode(),  # a raw byte that is not UTF-8 (or ASCII)
        b"/attestation?nonce=\xc3\xa9",
        b"/attestation?\x00=1",
        b"/attestation?nonce=5a 5a",
    ],
)
async def test_raw_bytes_outside_a_uri_are_refused_before_the_parser(
    client: TestClient[Any, Any], harness: Harness, target: bytes
) -> None:
    await raw_get(client, b"/attestation")  # let the start-up refresh settle
    before = harness.agent.quote_calls()
    status, _ = await raw_get(client, target)
    assert status == 400
    assert harness.agent.quote_calls() == before
