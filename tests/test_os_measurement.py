"""The pure lite measurement path: dstack's 0.6.0 fixture recomputes to its quote's MRTD and
RTMR0-2, the legacy 64 GiB fixture's RTMR0 event 0 is the high-memory TD HOB, and each input
dstack refuses is refused with a reason."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.attestation import parse_event_log, parse_quote
from oauth3.attestation.errors import MeasurementError
from oauth3.attestation.measurement_document import (
    MeasurementDocument,
    document_from_vm_config,
    manifest_entry,
    parse_measurement,
    read_document,
)
from oauth3.attestation.td_hob import (
    PAGE_SIZE,
    TdHobWitness,
    decode_witness,
    td_hob,
    td_hob_digest,
    witness_from_sections,
)
from oauth3.attestation.tdx_registers import (
    acpi_digests_from_log,
    expected_registers,
    shape_from_vm_config,
)

LITE = "dstack-head/verifier-fixtures/tdx-lite-getquote.json"
LEGACY = "dstack-head/verifier-fixtures/quote-report.json"
WITNESS_0_6_0 = bytes.fromhex("80100904000609020b021010")


def load(vectors: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    document = json.loads((vectors / name).read_text())
    return document, json.loads(document["vm_config"])


def lite_document(vm_config: dict[str, Any]) -> MeasurementDocument:
    document = document_from_vm_config(vm_config)
    assert document is not None
    return document


def test_the_lite_fixture_recomputes_to_its_quote(vectors: Path) -> None:
    raw, vm_config = load(vectors, LITE)
    document = lite_document(vm_config)
    document.check_belongs_to(bytes.fromhex(vm_config["os_image_hash"]))
    report = parse_quote(bytes.fromhex(raw["quote"])).report
    acpi = acpi_digests_from_log(parse_event_log(raw["event_log"]))
    registers = expected_registers(document.measurement, shape_from_vm_config(vm_config), acpi)
    assert registers.as_dict() == {
        "mrtd": report.mr_td,
        "rtmr0": report.rtmr[0],
        "rtmr1": report.rtmr[1],
        "rtmr2": report.rtmr[2],
    }
    assert document.measurement.td_hob_witness == WITNESS_0_6_0


def test_the_cbor_encoder_writes_dstacks_exact_bytes(vectors: Path) -> None:
    _, vm_config = load(vectors, LITE)
    document = lite_document(vm_config)
    assert document.measurement.to_cbor() == document.measurement_bytes
    assert parse_measurement(document.measurement.to_cbor()) == document.measurement


def test_the_64_gib_legacy_fixture_has_the_split_td_hob_as_rtmr0_event_0(vectors: Path) -> None:
    raw, vm_config = load(vectors, LEGACY)
    assert vm_config["memory_size"] == 64 * 2**30
    first = parse_event_log(raw["event_log"])[0]
    witness = decode_witness(WITNESS_0_6_0)
    assert td_hob_digest(witness, vm_config["memory_size"]) == first.digest
    # below the split the same RAM would be one resource HOB, a different digest
    assert first.digest != hashlib.sha384(td_hob(witness, 0xAFFFF000)).digest()


def test_dstacks_tdvf_sections_give_its_witness_vector() -> None:
    sections = [
        (0x810000, 0x10000, False),
        (0x80B000, 0x2000, False),
        (0x809000, 0x2000, True),
        (0x800000, 0x6000, False),
    ]
    assert witness_from_sections(sections).encode() == WITNESS_0_6_0


@pytest.mark.parametrize(
    "sections",
    [[], [(0x1000, 0x1000, False)], [(0x1000, 0x2000, True), (0x2000, 0x1000, False)]],
    ids=["none", "no-td-hob", "overlap"],
)
def test_witness_from_sections_refuses_what_dstack_refuses(
    sections: list[tuple[int, int, bool]],
) -> None:
    with pytest.raises(MeasurementError):
        witness_from_sections(sections)


def parse_hob(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """An independent reader: (EndOfHobList, [(resource type, start, length)])."""
    kind, length, version = struct.unpack_from("<HH4xI", data, 0)
    assert (kind, length, version) == (1, 56, 9)
    (end_of_list,) = struct.unpack_from("<Q", data, 48)
    resources = []
    for offset in range(56, len(data), 48):
        kind, length, rtype, attributes, start, size = struct.unpack_from(
            "<HH4x16xB3xIQQ", data, offset
        )
        assert (kind, length, attributes) == (3, 48, 7)
        resources.append((rtype, start, size))
    return end_of_list, resources


@st.composite
def witnesses(draw: st.DrawFn) -> TdHobWitness:
    base = draw(st.integers(0x100, 0x1000))
    ranges, page = [], base
    for _ in range(draw(st.integers(1, 5))):
        page += draw(st.integers(0, 16))
        count = draw(st.integers(1, 32))
        ranges.append((page * PAGE_SIZE, count * PAGE_SIZE))
        page += count
    hob = draw(st.sampled_from(ranges))[0]
    return TdHobWitness(hob, tuple(ranges))


MEMORY = st.one_of(
    st.just(2 * 2**30), st.integers(0xB0000000 // PAGE_SIZE, 2**28).map(lambda p: p * PAGE_SIZE)
)


@settings(max_examples=200, deadline=None)
@given(witnesses(), MEMORY)
def test_td_hobs_round_trip_through_the_witness(witness: TdHobWitness, memory: int) -> None:
    """Like dstack's tdvf.rs vector: ranges -> witness bytes -> the same ranges; the HOB built
    from them accepts exactly those ranges and hands the rest of RAM over, split above 2 GiB."""
    assert decode_witness(witness.encode()) == witness
    data = td_hob(witness, memory)
    end_of_list, resources = parse_hob(data)
    assert end_of_list == witness.td_hob_address + len(data) + 8
    assert [(s, n) for t, s, n in resources if t == 0] == list(witness.ranges)
    covered = sum(n for _, _, n in resources)
    assert covered == memory
    low = [(s, n) for _, s, n in resources if s < 2**32]
    assert sorted(low) == low
    assert all(s + n <= min(memory, 2**31) for s, n in low)
    if memory >= 0xB0000000:
        assert resources[-1] == (7, 2**32, memory - 2**31)


@pytest.mark.parametrize("memory", [2**30, 2 * 2**30 + PAGE_SIZE, 0xB0000000 - PAGE_SIZE])
def test_memory_sizes_dstack_refuses_are_refused(vectors: Path, memory: int) -> None:
    raw, vm_config = load(vectors, LITE)
    acpi = acpi_digests_from_log(parse_event_log(raw["event_log"]))
    shape = shape_from_vm_config({**vm_config, "memory_size": memory})
    with pytest.raises(MeasurementError, match=r"memory_size .* is refused"):
        expected_registers(lite_document(vm_config).measurement, shape, acpi)


@pytest.mark.parametrize(
    ("fields", "two_pass"),
    [
        ({"qemu_version": "8.2.2"}, True),
        ({"qemu_version": "9.2.1"}, False),
        ({}, False),
        # dstack feeds qemu_single_pass_add_pages into two_pass_add_pages (tdx.rs:75): copied
        ({"qemu_version": "9.2.1", "qemu_single_pass_add_pages": True}, True),
        ({"qemu_version": "8.2.2", "qemu_single_pass_add_pages": False}, False),
    ],
)
def test_the_mrtd_candidate_follows_dstacks_rules(fields: dict[str, Any], two_pass: bool) -> None:
    shape = shape_from_vm_config({"memory_size": 2 * 2**30, **fields})
    assert shape.two_pass_add_pages is two_pass


@pytest.mark.parametrize("version", ["7.2.0", "9.2", "nine", "9.2.1.1"])
def test_qemu_versions_dstack_mr_refuses_are_refused(version: str) -> None:
    with pytest.raises(MeasurementError, match="QEMU"):
        shape_from_vm_config({"memory_size": 2 * 2**30, "qemu_version": version})


def test_acpi_digests_need_the_three_named_events(vectors: Path) -> None:
    raw, _ = load(vectors, LITE)
    events = parse_event_log(raw["event_log"])
    renamed = [
        dataclasses.replace(e, event="acpi-rsdp") if e.event == "acpi-tables" else e for e in events
    ]
    with pytest.raises(MeasurementError, match="acpi-rsdp"):
        acpi_digests_from_log(renamed)
    with pytest.raises(MeasurementError, match="2 RTMR0 ACPI DATA"):
        acpi_digests_from_log([e for e in events if e.event != "acpi-loader"])
    # the legacy log has unnamed ACPI events: the lite path cannot use it
    legacy, _ = load(vectors, LEGACY)
    with pytest.raises(MeasurementError):
        acpi_digests_from_log(parse_event_log(legacy["event_log"]))


def test_one_changed_byte_of_either_file_is_refused(vectors: Path) -> None:
    _, vm_config = load(vectors, LITE)
    document = lite_document(vm_config)
    pinned = bytes.fromhex(vm_config["os_image_hash"])
    cbor = bytearray(document.measurement_bytes)
    cbor[-1] ^= 1
    with pytest.raises(MeasurementError, match=r"sha256sum\.txt lists"):
        read_document(document.checksum_file, bytes(cbor))
    manifest = document.checksum_file.replace(b"  measurement", b" measurement")
    changed = read_document(manifest, document.measurement_bytes)
    with pytest.raises(MeasurementError, match="not the os_image_hash"):
        changed.check_belongs_to(pinned)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (b"", "does not list"),
        (b"00  measurement.tdx.cbor\n", "not 32 bytes"),
        (b"zz  measurement.tdx.cbor\n", "not hex"),
        (b"lonely\n", "no file name"),
        (b"\xff\n", "not UTF-8"),
    ],
)
def test_malformed_manifests_are_refused(manifest: bytes, reason: str) -> None:
    with pytest.raises(MeasurementError, match=reason):
        manifest_entry(manifest, "measurement.tdx.cbor")


def test_a_manifest_listing_the_cbor_twice_is_refused(vectors: Path) -> None:
    _, vm_config = load(vectors, LITE)
    document = lite_document(vm_config)
    twice = document.checksum_file + document.checksum_file
    with pytest.raises(MeasurementError, match="twice"):
        read_document(twice, document.measurement_bytes)


def test_an_attached_document_that_is_not_base64_is_refused() -> None:
    attached = {"checksum_file": "!!", "measurement": base64.b64encode(b"x").decode()}
    with pytest.raises(MeasurementError, match="checksum_file is not base64"):
        document_from_vm_config({"tdx_measurement": attached})
    assert document_from_vm_config({}) is None


def test_another_ovmf_variant_in_vm_config_is_refused(vectors: Path) -> None:
    raw, vm_config = load(vectors, LITE)
    acpi = acpi_digests_from_log(parse_event_log(raw["event_log"]))
    shape = shape_from_vm_config({**vm_config, "ovmf_variant": "post202505"})
    with pytest.raises(MeasurementError, match="OVMF variant"):
        expected_registers(lite_document(vm_config).measurement, shape, acpi)
