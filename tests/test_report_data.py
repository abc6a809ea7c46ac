"""The `oauth3/v1` report_data layout and its nonce rules (DESIGN contract 2)."""

from __future__ import annotations

import hashlib

import pytest

from oauth3.attestation import (
    ReportDataError,
    decode_mr_config_id,
    info_digest,
    mr_config_id_v1,
    parse_nonce,
    read_report_data,
    report_data_for,
)
from oauth3.attestation.errors import AttestationError

INFO = b'{"build_info":null,"name":"oauth3","version":"0.1.0"}'


def test_without_nonce_is_digest_then_zeros() -> None:
    rd = report_data_for(info_digest(INFO))
    assert rd == hashlib.sha256(INFO).digest() + bytes(32)
    bound = read_report_data(rd)
    assert bound.info_digest == hashlib.sha256(INFO).digest()
    assert bound.nonce is None


def test_with_nonce_round_trips() -> None:
    nonce = parse_nonce("ab" * 32)
    rd = report_data_for(info_digest(INFO), nonce)
    assert rd[32:] == nonce
    assert read_report_data(rd).nonce == nonce


def test_uppercase_hex_accepted() -> None:
    assert parse_nonce("AB" * 32) == bytes([0xAB]) * 32


def test_large_info_is_hashed_not_embedded() -> None:
    big = b"x" * 10_000
    assert report_data_for(info_digest(big))[:32] == hashlib.sha256(big).digest()


@pytest.mark.parametrize(
    ("nonce", "message"),
    [
        ("abc", "odd number"),
        ("zz" * 32, "non-hex character 'z'"),
        ("ab" * 31, "must be 64 hex characters"),
        ("ab" * 33, "must be 64 hex characters"),
        ("", "must be 64 hex characters"),
        ("00" * 32, "all-zero nonce"),
        ("é" * 64, "non-hex"),
    ],
)
def test_bad_nonces(nonce: str, message: str) -> None:
    with pytest.raises(ReportDataError, match=message):
        parse_nonce(nonce)


def test_builder_guards() -> None:
    with pytest.raises(ReportDataError):
        report_data_for(b"short")
    with pytest.raises(ReportDataError):
        report_data_for(bytes(32), bytes(32))
    with pytest.raises(ReportDataError):
        report_data_for(bytes(32), b"\x01" * 31)
    with pytest.raises(ReportDataError):
        read_report_data(bytes(63))


def test_mr_config_id_v1_round_trip() -> None:
    digest = hashlib.sha256(b"compose").digest()
    encoded = mr_config_id_v1(digest)
    assert len(encoded) == 48
    assert encoded[0] == 1
    assert decode_mr_config_id(encoded) == digest
    assert decode_mr_config_id(bytes(48)) is None
    with pytest.raises(AttestationError, match="neither zero nor version 1"):
        decode_mr_config_id(b"\x02" + encoded[1:])
    with pytest.raises(AttestationError, match="neither zero nor version 1"):
        decode_mr_config_id(encoded[:47] + b"\x01")
