"""Property tests of the sidecar's request validation: anything at all gets a 400 Problem or
passes, and what passes is exactly what the agent would accept."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.runtime.problem import Problem
from oauth3.sidecar.app import validate_quote_request


def refusal(body: bytes) -> Problem | None:
    """The Problem the sidecar answers with, or None when it would forward the request."""
    try:
        validate_quote_request(body)
    except Problem as problem:
        return problem
    return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_pass_or_get_400(body: bytes) -> None:
    problem = refusal(body)
    assert problem is None or problem.status == 400


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_random_json_pass_or_get_400(document: object) -> None:
    problem = refusal(orjson.dumps(document))
    if problem is not None:
        assert problem.status == 400
        return
    # what passes is an object with hex of exactly 64 bytes, and what is forwarded is the
    # sidecar's own body holding exactly that value
    assert isinstance(document, dict)
    report_data = document["report_data"]
    assert isinstance(report_data, str)
    assert len(bytes.fromhex(report_data.removeprefix("0x"))) == 64
    forwarded = orjson.loads(validate_quote_request(orjson.dumps(document)))
    assert forwarded == {"report_data": report_data.removeprefix("0x").lower()}


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=64, max_size=64), st.booleans(), st.booleans())
def test_every_valid_report_data_passes(data: bytes, upper: bool, prefixed: bool) -> None:
    text = data.hex().upper() if upper else data.hex()
    validate_quote_request(orjson.dumps({"report_data": ("0x" if prefixed else "") + text}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200).filter(lambda data: len(data) != 64), st.booleans())
def test_any_other_length_never_passes(data: bytes, prefixed: bool) -> None:
    problem = refusal(orjson.dumps({"report_data": ("0x" if prefixed else "") + data.hex()}))
    assert problem is not None
    assert f"exactly 64 bytes, not {len(data)}" in problem.detail
