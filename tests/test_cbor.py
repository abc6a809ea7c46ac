"""The strict CBOR codec: what it refuses, and that it round-trips what it accepts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.attestation import cbor
from oauth3.attestation.errors import CborError


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes.fromhex("5f4101ff"), "indefinite"),
        (bytes.fromhex("bf6161 01ff".replace(" ", "")), "indefinite"),
        (bytes.fromhex("a2616101616102"), "duplicate map key"),
        (bytes.fromhex("0101"), "trailing"),
        (bytes.fromhex("1817"), "non-minimal"),
        (bytes.fromhex("190017"), "non-minimal"),
        (bytes.fromhex("1a0000ffff"), "non-minimal"),
        (bytes.fromhex("1b00000000ffffffff"), "non-minimal"),
        (bytes.fromhex("5817") + bytes(0x17), "non-minimal"),
        (bytes.fromhex("c240"), "outside the subset"),
        (bytes.fromhex("f93c00"), "outside the subset"),
        (bytes.fromhex("f7"), "outside the subset"),
        (bytes.fromhex("62c328"), "not UTF-8"),
        (bytes.fromhex("a1f401"), "map key"),
        (bytes.fromhex("43 0102".replace(" ", "")), "truncated"),
        (b"", "truncated"),
    ],
)
def test_the_decoder_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(CborError, match=reason):
        cbor.decode(data)


def test_nesting_is_bounded() -> None:
    with pytest.raises(CborError, match="nesting"):
        cbor.decode(b"\x81" * 40 + b"\x00")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65536, "1a00010000"),
        (2**32, "1b0000000100000000"),
        (-1, "20"),
        (-25, "3818"),
        (b"", "40"),
        ("a", "6161"),
        ([1, [2]], "820181 02".replace(" ", "")),
        ({"b": 1, "a": 2}, "a2616201616102"),
        (True, "f5"),
        (None, "f6"),
    ],
)
def test_the_encoder_is_minimal_and_keeps_key_order(value: object, encoded: str) -> None:
    assert cbor.encode(value) == bytes.fromhex(encoded)
    assert cbor.decode(bytes.fromhex(encoded)) == value


@pytest.mark.parametrize("value", [1.5, 2**64, -(2**64) - 1, {(1,): 2}, object()])
def test_the_encoder_refuses_values_outside_the_subset(value: object) -> None:
    with pytest.raises(CborError):
        cbor.encode(value)


KEYS = st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8), st.text(max_size=8))
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), KEYS),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_decode_inverts_encode_and_encode_inverts_decode(value: object) -> None:
    encoded = cbor.encode(value)
    decoded = cbor.decode(encoded)
    assert decoded == value
    assert cbor.encode(decoded) == encoded
