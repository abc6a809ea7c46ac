"""Property tests: random and mutated quotes and logs only ever raise the package's typed errors."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauth3.attestation import (
    AttestationError,
    compare_with_quote,
    load_evidence,
    parse_event_log,
    parse_nonce,
    parse_quote,
)
from tests.conftest import VECTORS

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


SAMPLE = (VECTORS / "dcap-qvl/sample/tdx_quote").read_bytes()


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_quote(data)


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(SAMPLE)),
)
def test_mutated_sample(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SAMPLE)
    for offset, value in edits:
        data[offset] = value
    try:
        quote = parse_quote(bytes(data[:cut]))
    except AttestationError:
        return
    assert len(quote.report.report_data) == 64


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.text(max_size=20))
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
_event = st.fixed_dictionaries(
    {},
    optional={
        "imr": st.integers(-1, 5) | _json_leaf,
        "event_type": st.sampled_from([1, 4, 134217729, -1]) | _json_leaf,
        "digest": st.sampled_from(["", "00" * 48, "ab"]) | st.text(max_size=8),
        "event": st.text(max_size=10) | _json_leaf,
        "event_payload": st.sampled_from(["", "00", "zz", "abc"]),
        "version": st.sampled_from([1, 2, "2"]),
    },
)


@SETTINGS
@given(st.one_of(_json, st.lists(_event, max_size=6)))
def test_random_event_logs(doc: object) -> None:
    with contextlib.suppress(AttestationError):
        compare_with_quote(parse_event_log(json.dumps(doc)), [bytes(48)] * 4)


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_evidence(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        load_evidence(data)


@SETTINGS
@given(st.text(max_size=80))
def test_random_nonces(text: str) -> None:
    with contextlib.suppress(AttestationError):
        assert len(parse_nonce(text)) == 32


def test_the_mutation_seed_is_a_real_quote() -> None:
    assert parse_quote(SAMPLE).header.version == 4
