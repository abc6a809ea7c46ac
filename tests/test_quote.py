"""TDX quote parsing against the real quotes in the golden vectors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from oauth3.attestation import QuoteFormatError, parse_quote


def load_quote(vectors: Path, name: str) -> bytes:
    path = vectors / name
    if name.endswith(".json"):
        return bytes.fromhex(json.loads(path.read_text())["quote"])
    if name.endswith(".hex"):
        return bytes.fromhex(path.read_text().strip())
    return path.read_bytes()


# (file, version, body type, report_data hex prefix, mr_td prefix, rtmr3 prefix) from PROVENANCE.md
FACTS = [
    (
        "dstack-head/verifier-fixtures/quote-report.json",
        4,
        2,
        "1234" + "00" * 62,
        "b24d3b24",
        "0f787c38",
    ),
    ("dstack-v0.5.4-simulator/quote.hex", 4, 2, "00" * 64, "c68518a0", "6d1a3da9"),
    ("dstack-examples/rtmr3-based/report.json", 4, 2, "00" * 64, "", ""),
    ("dcap-qvl/sample/tdx_quote", 4, 2, "9a9d48e7", "", "00" * 48),
    ("dcap-qvl/sample/tdx_quote_outdated", 5, 3, "d2142b64", "", "00" * 48),
]


@pytest.mark.parametrize(("name", "version", "body", "rd", "mr_td", "rtmr3"), FACTS)
def test_vector_facts(
    vectors: Path, name: str, version: int, body: int, rd: str, mr_td: str, rtmr3: str
) -> None:
    quote = parse_quote(load_quote(vectors, name))
    assert quote.header.version == version
    assert quote.body_type == body
    assert quote.header.tee_type == 0x81
    assert quote.report.report_data.hex().startswith(rd)
    assert quote.report.mr_td.hex().startswith(mr_td)
    assert quote.report.rtmr[3].hex().startswith(rtmr3)
    assert quote.signature_data.certification_data_type == 5
    assert len(quote.signature_data.pck_chain_pem()) == 3


def test_v4_layout_offsets(vectors: Path) -> None:
    raw = load_quote(vectors, "dstack-head/verifier-fixtures/quote-report.json")
    quote = parse_quote(raw)
    assert quote.signed_length == 632
    assert quote.report_data_offset == 568
    assert raw[568:632] == quote.report.report_data
    assert struct.unpack_from("<I", raw, 632)[0] == 4300
    # the buffer carries 70 bytes of zero padding after the signature data
    assert quote.end_offset == 636 + 4300
    assert raw[quote.end_offset :] == bytes(70)


def test_v5_td15_layout(vectors: Path) -> None:
    raw = load_quote(vectors, "dcap-qvl/sample/tdx_quote_outdated")
    quote = parse_quote(raw)
    assert quote.signed_length == 702
    assert quote.report_data_offset == 574
    assert raw[574:638] == quote.report.report_data
    assert quote.report.report_data[32:] == bytes(32)
    assert quote.report.tee_tcb_svn2 is not None
    assert quote.report.mr_servicetd is not None


def test_qe_report_binds_attestation_key(vectors: Path) -> None:
    sig = parse_quote(load_quote(vectors, "dcap-qvl/sample/tdx_quote")).signature_data
    expected = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest()
    assert sig.qe_report.report_data[:32] == expected


def test_td_attributes_and_fields(vectors: Path) -> None:
    quote = parse_quote(load_quote(vectors, "dstack-head/verifier-fixtures/quote-report.json"))
    assert quote.report.td_attributes.hex() == "0000001000000000"
    assert not quote.report.debug
    assert quote.report.mr_config_id == bytes(48)
    assert quote.report.tee_tcb_svn.hex().startswith("0b010400")


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 100, 631, 632, 635, 700, 1000, 1500])
def test_truncation_names_field_and_offset(vectors: Path, cut: int) -> None:
    raw = load_quote(vectors, "dcap-qvl/sample/tdx_quote")
    with pytest.raises(QuoteFormatError) as info:
        parse_quote(raw[:cut])
    assert info.value.offset is not None
    assert "needs" in str(info.value)
    assert f"at byte {info.value.offset}" in str(info.value)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x03\x00", "unsupported quote version 3"),
        (4, b"\x00\x00\x00\x00", "not TDX"),
        (2, b"\x03\x00", "not ECDSA-P256"),
        (766 - 2, b"\x05\x00", "certification data type 5"),
    ],
)
def test_inconsistent_header_fields(vectors: Path, offset: int, value: bytes, message: str) -> None:
    raw = bytearray(load_quote(vectors, "dcap-qvl/sample/tdx_quote"))
    raw[offset : offset + len(value)] = value
    with pytest.raises(QuoteFormatError, match=message):
        parse_quote(bytes(raw))


def test_declared_length_beyond_end(vectors: Path) -> None:
    raw = bytearray(load_quote(vectors, "dcap-qvl/sample/tdx_quote"))
    struct.pack_into("<I", raw, 632, 10**6)
    with pytest.raises(QuoteFormatError, match="signature_data") as info:
        parse_quote(bytes(raw))
    assert info.value.offset == 636


def test_rejects_non_bytes() -> None:
    with pytest.raises(QuoteFormatError, match="expected bytes"):
        parse_quote("0400")  # type: ignore[arg-type]


def test_the_vectors_are_the_upstream_bytes_named_in_the_notice(vectors: Path) -> None:
    lines = (vectors / "NOTICE").read_text().splitlines()
    listed = dict(
        reversed(line.split("  ", 1)) for line in lines if len(line) > 66 and line[64:66] == "  "
    )
    files = sorted(
        str(p.relative_to(vectors))
        for p in vectors.rglob("*")
        if p.is_file() and p.parent != vectors and "LICENSES" not in p.parts
    )
    assert sorted(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((vectors / name).read_bytes()).hexdigest() == digest, name
