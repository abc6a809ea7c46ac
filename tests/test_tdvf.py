"""TDVF parsing, MRTD and the TD HOB witness, on synthetic firmware and dstack's unit vector."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.attestation.errors import MeasurementError
from oauth3.attestation.tdvf import (
    ATTRIBUTE_MR_EXTEND,
    ATTRIBUTE_PAGE_AUG,
    PAGE_SIZE,
    SECTION_TD_HOB,
    TdvfSection,
    parse_tdvf_sections,
    td_hob_witness,
    tdvf_mrtd,
)
from tests.os_image_builders import DSTACK_HOB_SECTIONS, build_firmware, firmware_image

# dstack/dstack-mr/src/tdvf.rs @ 312dc605, test `td_hob_witness_v1_encodes_current_dstack_ranges_
# compactly`;
# the same bytes are the `td_hob` of dstack-0.6.0's measurement.tdx.cbor
DSTACK_WITNESS = bytes.fromhex("80100904000609020b021010")


def _reference_mrtd(image: bytes, sections: tuple[TdvfSection, ...], two_pass: bool) -> bytes:
    """MRTD written out longhand from the TDX module's TDH.MEM.PAGE.ADD / TDH.MR.EXTEND inputs."""
    log = hashlib.sha384()
    for s in sections:
        adds = []
        extends = []
        for page in range(s.memory_size // PAGE_SIZE):
            gpa = s.memory_address + page * PAGE_SIZE
            add = b"" if s.attributes & 2 else b"MEM.PAGE.ADD" + bytes(4) + struct.pack("<Q", gpa)
            adds.append(add.ljust(128, b"\0") if add else b"")
            ext = b""
            if s.attributes & 1:
                for off in range(0, PAGE_SIZE, 256):
                    head = b"MR.EXTEND" + bytes(7) + struct.pack("<Q", gpa + off)
                    chunk = s.data_offset + page * PAGE_SIZE + off
                    ext += head.ljust(128, b"\0") + image[chunk : chunk + 256]
            extends.append(ext)
        order = adds + extends if two_pass else [a + e for a, e in zip(adds, extends, strict=True)]
        for part in order:
            log.update(part)
    return log.digest()


def test_sections_parse_back_as_built() -> None:
    firmware = build_firmware()
    assert parse_tdvf_sections(firmware.image) == firmware.sections


@pytest.mark.parametrize("two_pass", [True, False])
def test_mrtd_matches_the_longhand_page_walk(two_pass: bool) -> None:
    firmware = build_firmware(pages=4, seed=3)
    got = tdvf_mrtd(firmware.image, firmware.sections, two_pass=two_pass)
    assert got == _reference_mrtd(firmware.image, firmware.sections, two_pass)


def test_two_pass_and_single_pass_differ_and_follow_the_measured_bytes() -> None:
    firmware = build_firmware()
    two = tdvf_mrtd(firmware.image, firmware.sections, two_pass=True)
    one = tdvf_mrtd(firmware.image, firmware.sections, two_pass=False)
    assert two != one
    flipped = bytearray(firmware.image)
    flipped[5] ^= 1  # inside the measured BFV
    assert tdvf_mrtd(bytes(flipped), firmware.sections, two_pass=True) != two
    unmeasured = bytearray(firmware.image)
    unmeasured[firmware.sections[1].data_offset] ^= 1  # the CFV is added, not extended
    assert tdvf_mrtd(bytes(unmeasured), firmware.sections, two_pass=True) == two


def test_witness_is_dstacks_vector() -> None:
    assert td_hob_witness(DSTACK_HOB_SECTIONS) == DSTACK_WITNESS
    firmware = build_firmware()
    assert td_hob_witness(parse_tdvf_sections(firmware.image)) == DSTACK_WITNESS


def test_witness_uses_multibyte_varints_for_high_pages() -> None:
    sections = (TdvfSection(0, 0, 0x1_0000_0000, 0x80_0000, SECTION_TD_HOB, 0),)
    # base page 0x100000 -> 80 80 40; delta 0; one range; start 0; 0x800 pages -> 80 10
    assert td_hob_witness(sections) == bytes.fromhex("8080400001008010")


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ((), "no TD_HOB"),
        ((DSTACK_HOB_SECTIONS[0],), "0 TD_HOB sections"),
        ((*DSTACK_HOB_SECTIONS, TdvfSection(0, 0, 0x80A000, 0x2000, 3, 0)), "overlap"),
        ((*DSTACK_HOB_SECTIONS, DSTACK_HOB_SECTIONS[2]), "2 TD_HOB"),
        ((TdvfSection(0, 0, 0x809000, 0, SECTION_TD_HOB, 0),), "empty"),
        ((TdvfSection(0, 0, 0x900000, 0x1000, 4, 0),), "no TD_HOB"),
    ],
)
def test_witness_refuses_what_dstack_refuses(
    sections: tuple[TdvfSection, ...], reason: str
) -> None:
    with pytest.raises(MeasurementError, match=reason):
        td_hob_witness(sections)


def _corrupt(image: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(image)
    out[offset : offset + len(value)] = value
    return bytes(out)


def test_malformed_firmware_is_refused_with_a_reason() -> None:
    image = build_firmware().image
    descriptor = len(image) - 32 - 16 - 2 - (24 + 22 + 24) - (16 + 32 * 7)
    cases = [
        (image[:-1], "footer"),
        (b"", "footer"),
        (_corrupt(image, descriptor, b"FVDT"), "signature"),
        (_corrupt(image, descriptor + 8, b"\x02"), "version 2"),
        (_corrupt(image, descriptor + 16 + 8, b"\x01"), "not page aligned"),
        (_corrupt(image, len(image) - 32 - 16 - 2 - 24 - 16, bytes(16)), "metadata offset entry"),
        (_corrupt(image, descriptor + 12, b"\xff"), "do not fit"),
    ]
    for bad, reason in cases:
        with pytest.raises(MeasurementError, match=reason):
            parse_tdvf_sections(bad)


def test_measured_page_past_the_image_is_refused() -> None:
    firmware = build_firmware()
    short = firmware.sections[0]
    beyond = TdvfSection(
        len(firmware.image), PAGE_SIZE, short.memory_address, PAGE_SIZE, 1, short.attributes
    )
    with pytest.raises(MeasurementError, match="past the firmware"):
        tdvf_mrtd(firmware.image, (beyond,), two_pass=False)


SECTIONS = st.builds(
    TdvfSection,
    data_offset=st.integers(0, 4).map(lambda pages: pages * PAGE_SIZE),
    raw_size=st.just(0),
    memory_address=st.integers(0, 2**40).map(lambda page: page * PAGE_SIZE),
    memory_size=st.integers(0, 3).map(lambda pages: pages * PAGE_SIZE),
    section_type=st.integers(0, 5),
    attributes=st.sampled_from([0, ATTRIBUTE_MR_EXTEND, ATTRIBUTE_PAGE_AUG]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(SECTIONS, max_size=8).map(tuple), st.binary(min_size=1, max_size=64))
def test_any_descriptor_parses_back_and_measures_only_its_extended_pages(
    sections: tuple[TdvfSection, ...], noise: bytes
) -> None:
    body = (noise * (8 * PAGE_SIZE // len(noise) + 1))[: 8 * PAGE_SIZE]
    image = firmware_image(body, sections)
    assert parse_tdvf_sections(image) == sections
    for two_pass in (True, False):
        assert tdvf_mrtd(image, sections, two_pass=two_pass) == _reference_mrtd(
            image, sections, two_pass
        )
