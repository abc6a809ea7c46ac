"""Measuring a dstack OS from its image files: cbor material, registers, manifest binding."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from oauth3.attestation.errors import MeasurementError
from oauth3.attestation.eventlog import parse_event_log
from oauth3.attestation.measurement_document import (
    document_from_vm_config,
    parse_measurement,
    read_document,
)
from oauth3.attestation.os_image import (
    check_manifest,
    image_measurement,
    image_registers,
    parse_image_metadata,
)
from oauth3.attestation.quote import parse_quote
from oauth3.attestation.tdx_registers import (
    AcpiDigests,
    VmShape,
    acpi_digests_from_log,
    expected_registers,
)
from tests.os_image_builders import CMDLINE, ROOTFS, as_files, image_dir_files, sha256sum

ACPI = AcpiDigests(b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, "pinned")
LITE = "dstack-head/verifier-fixtures/tdx-lite-getquote.json"


SHAPES = [
    VmShape(2 << 30, (8, 2, 2), two_pass_add_pages=True),
    VmShape(2 << 30, (9, 2, 1), two_pass_add_pages=False),
    VmShape(0xB0000000, (9, 2, 1), two_pass_add_pages=False),
    VmShape(64 << 30, (8, 2, 2), two_pass_add_pages=True),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.memory_size >> 20}M")
def test_image_to_cbor_to_document_gives_the_direct_registers(shape: VmShape) -> None:
    contents = image_dir_files()
    files = as_files(contents)
    cbor_bytes = image_measurement(files).to_cbor()
    document = read_document(
        sha256sum({**contents, "measurement.tdx.cbor": cbor_bytes}), cbor_bytes
    )
    via_document = expected_registers(document.measurement, shape, ACPI).as_dict()
    direct = image_registers(files, shape, ACPI).as_dict()
    assert direct == via_document
    assert parse_measurement(cbor_bytes).to_cbor() == cbor_bytes


def test_memory_the_document_refuses_still_measures_from_the_files() -> None:
    files = as_files(image_dir_files())
    odd = VmShape(0x90000000, (9, 2, 1), two_pass_add_pages=False)
    direct = image_registers(files, odd, ACPI)
    with pytest.raises(MeasurementError, match="refused"):
        expected_registers(image_measurement(files), odd, ACPI)
    high = image_registers(files, replace(odd, memory_size=0xB0000000), ACPI)
    assert direct.rtmr1_events[0] != high.rtmr1_events[0]
    assert direct.rtmr1_events[1:] == high.rtmr1_events[1:]


def test_each_file_moves_only_its_registers() -> None:
    contents = image_dir_files()
    shape = SHAPES[0]
    base = image_registers(as_files(contents), shape, ACPI).as_dict()
    edits = {
        "ovmf.fd": (lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:], {"mrtd"}),  # a measured byte
        "bzImage": (lambda d: d[:-1] + bytes([d[-1] ^ 1]), {"rtmr1"}),
        # the initrd's size is in the patched kernel, its bytes in RTMR2
        "initramfs.cpio.gz": (lambda d: d + b"\0", {"rtmr1", "rtmr2"}),
    }
    for name, (edit, registers) in edits.items():
        edited = {**contents, name: edit(contents[name])}
        moved = image_registers(as_files(edited), shape, ACPI).as_dict()
        assert {k for k in base if base[k] != moved[k]} == registers, name
    cmdline = image_dir_files(CMDLINE + " quiet")
    moved = image_registers(as_files(cmdline), shape, ACPI).as_dict()
    assert {k for k in base if base[k] != moved[k]} == {"rtmr2"}


def test_without_acpi_digests_rtmr0_is_left_open() -> None:
    registers = image_registers(as_files(image_dir_files()), SHAPES[0], None).as_dict()
    assert registers["rtmr0"] is None
    assert all(isinstance(registers[k], bytes) for k in ("mrtd", "rtmr1", "rtmr2"))


def test_rtmr0_of_dstacks_hob_layout_and_logged_acpi_equals_the_lite_quotes(vectors: Path) -> None:
    """The synthetic OVMF has dstack 0.6.0's TD_HOB/TEMP_MEM sections, so with the fixture's
    ACPI events at its 2 GiB the image path reproduces the real quote's RTMR0."""
    raw = json.loads((vectors / LITE).read_text())
    vm_config = json.loads(raw["vm_config"])
    document = document_from_vm_config(vm_config)
    assert document is not None
    acpi = acpi_digests_from_log(parse_event_log(raw["event_log"]))
    shape = VmShape(vm_config["memory_size"], (8, 2, 2), two_pass_add_pages=True)
    registers = image_registers(as_files(image_dir_files()), shape, acpi).as_dict()
    assert registers["rtmr0"] == parse_quote(bytes.fromhex(raw["quote"])).report.rtmr[0]
    ours = image_measurement(as_files(image_dir_files()))
    assert ours.td_hob_witness == document.measurement.td_hob_witness
    assert len(ours.to_cbor()) == len(document.measurement_bytes)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"cmdline": "a", "cmdline": "b"}', "appears twice"),
        (b"[]", "not a JSON object"),
        (json.dumps({"bios": "a", "kernel": "b", "initrd": "c"}).encode(), "cmdline"),
        (
            json.dumps({"bios": "../a", "kernel": "b", "initrd": "c", "cmdline": "x"}).encode(),
            "leaves",
        ),
        (json.dumps({"kernel": "b", "initrd": "c", "cmdline": "x"}).encode(), "bios"),
        (
            json.dumps(
                {"bios": "a", "kernel": "b", "initrd": "c", "cmdline": "x", "ovmf_variant": "x"}
            ).encode(),
            "ovmf_variant",
        ),
    ],
)
def test_bad_metadata_is_refused_with_the_field(metadata: bytes, reason: str) -> None:
    with pytest.raises(MeasurementError, match=reason):
        parse_image_metadata(metadata)


@pytest.mark.parametrize(
    "cmdline", ["console=ttyS0", "dstack.rootfs_hash=abcd", f"dstack.rootfs_hash=zz{ROOTFS[2:]}"]
)
def test_the_cbor_needs_a_rootfs_hash_in_the_cmdline(cmdline: str) -> None:
    files = as_files(image_dir_files(cmdline))
    with pytest.raises(MeasurementError, match="rootfs_hash"):
        image_measurement(files)
    assert image_registers(files, SHAPES[0], ACPI).mrtd  # the registers do not need it


def test_the_manifest_binds_every_file_and_names_the_first_that_differs() -> None:
    contents = image_dir_files()
    manifest = sha256sum(contents)
    assert check_manifest(manifest, contents) == hashlib.sha256(manifest).digest()
    tampered = {**contents, "bzImage": contents["bzImage"] + b"\0"}
    with pytest.raises(MeasurementError, match="bzImage does not hash"):
        check_manifest(manifest, tampered)
    with pytest.raises(MeasurementError, match="does not list extra"):
        check_manifest(manifest, {**contents, "extra": b""})
