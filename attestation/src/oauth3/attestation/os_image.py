"""A dstack OS image measured from its files (`metadata.json`, OVMF, bzImage, initrd), not its cbor.

Mirrors dstack-mr's image-directory paths (`tdx.rs:260-327` writes `measurement.tdx.cbor`,
`tdx.rs:416-621` computes the registers with caller-supplied ACPI digests): MRTD from the TDVF
sections, RTMR1 from the QEMU-patched kernel at the VM's real memory size, RTMR2 from the command
line and initrd, RTMR0 from the TD HOB and the three ACPI digests the caller pins, because only
dstack's patched QEMU can generate the ACPI tables. Pure: the caller reads the files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import MeasurementError
from .measurement_document import OVMF_VARIANTS, TdxImageMeasurement, manifest_entry
from .qemu_kernel import cmdline_digest, patched_kernel_digest, rtmr2_events
from .strict_json import StrictJSONError, parse_strict_json
from .td_hob import HIGH_MEMORY_SPLIT, decode_witness, td_hob_digest
from .tdvf import parse_tdvf_sections, td_hob_witness, tdvf_mrtd
from .tdx_registers import AcpiDigests, VmShape, replay, rtmr0_events, rtmr1_events

METADATA_FILE = "metadata.json"
CHECKSUM_FILE = "sha256sum.txt"
_ROOTFS_HASH_PARAM = "dstack.rootfs_hash="


@dataclass(frozen=True, slots=True)
class ImageMetadata:
    """What `metadata.json` says: the three file names, the base command line, the OVMF flavour."""

    bios: str
    kernel: str
    initrd: str
    cmdline: str
    version: str
    ovmf_variant: str


def _file_name(document: Mapping[str, object], key: str) -> str:
    name = document.get(key)
    if not isinstance(name, str) or not name:
        raise MeasurementError(f"{METADATA_FILE}: {key} is not a file name")
    if "\x00" in name:
        raise MeasurementError(f"{METADATA_FILE}: {key} {name!r} holds a NUL byte")
    if "/" in name or "\\" in name or name in {".", ".."}:
        raise MeasurementError(f"{METADATA_FILE}: {key} {name!r} leaves the image directory")
    return name


def parse_image_metadata(raw: bytes) -> ImageMetadata:
    """`metadata.json` as dstack-mr reads it; MeasurementError names the missing or bad field."""
    try:
        document = parse_strict_json(raw)
    except StrictJSONError as exc:
        raise MeasurementError(f"{METADATA_FILE} is not JSON as oauth3 reads it: {exc}") from None
    if not isinstance(document, dict):
        raise MeasurementError(f"{METADATA_FILE} is not a JSON object")
    cmdline = document.get("cmdline")
    if not isinstance(cmdline, str) or not cmdline.strip():
        raise MeasurementError(f"{METADATA_FILE}: cmdline is required for TDX measurement")
    version = document.get("version", "")
    variant = document.get("ovmf_variant") or OVMF_VARIANTS[0]
    if not isinstance(version, str) or variant not in OVMF_VARIANTS:
        raise MeasurementError(f"{METADATA_FILE}: version or ovmf_variant is not understood")
    names = {key: _file_name(document, key) for key in ("bios", "kernel", "initrd")}
    return ImageMetadata(cmdline=cmdline, version=version, ovmf_variant=variant, **names)


def _check_rootfs_hash(cmdline: str) -> None:
    """dstack's builder insists the first `dstack.rootfs_hash=` parameter is 32 bytes of hex."""
    value = next(
        (p[len(_ROOTFS_HASH_PARAM) :] for p in cmdline.split() if p.startswith(_ROOTFS_HASH_PARAM)),
        None,
    )
    try:
        valid = value is not None and len(bytes.fromhex(value)) == 32
    except ValueError:
        valid = False
    if not valid:
        raise MeasurementError(f"{METADATA_FILE}: cmdline has no dstack.rootfs_hash=<64 hex>")


@dataclass(frozen=True, slots=True)
class ImageFiles:
    """An image directory's measured files, read by the caller."""

    metadata: ImageMetadata
    firmware: bytes
    kernel: bytes
    initrd: bytes


def image_measurement(files: ImageFiles) -> TdxImageMeasurement:
    """The `measurement.tdx.cbor` content dstack's builder writes for these files (the kernel
    patched for high memory). MeasurementError where dstack refuses, e.g. no rootfs hash."""
    _check_rootfs_hash(files.metadata.cmdline)
    sections = parse_tdvf_sections(files.firmware)
    return TdxImageMeasurement(
        cmdline_sha384=cmdline_digest(files.metadata.cmdline),
        kernel_authenticode=patched_kernel_digest(
            files.kernel, len(files.initrd), HIGH_MEMORY_SPLIT
        ),
        initrd_sha384=hashlib.sha384(files.initrd).digest(),
        ovmf_variant=files.metadata.ovmf_variant,
        mrtd_single_pass=tdvf_mrtd(files.firmware, sections, two_pass=False),
        mrtd_two_pass=tdvf_mrtd(files.firmware, sections, two_pass=True),
        td_hob_witness=td_hob_witness(sections),
    )


@dataclass(frozen=True, slots=True)
class ImageRegisters:
    """MRTD, RTMR1 and RTMR2 from the image files; RTMR0 only when ACPI digests were given."""

    mrtd: bytes
    rtmr0_events: tuple[bytes, ...] | None
    rtmr1_events: tuple[bytes, ...]
    rtmr2_events: tuple[bytes, ...]

    def as_dict(self) -> dict[str, bytes | None]:
        """By platform pin name: mrtd, rtmr0 (None without ACPI digests), rtmr1, rtmr2."""
        return {
            "mrtd": self.mrtd,
            "rtmr0": None if self.rtmr0_events is None else replay(self.rtmr0_events),
            "rtmr1": replay(self.rtmr1_events),
            "rtmr2": replay(self.rtmr2_events),
        }


def image_registers(files: ImageFiles, shape: VmShape, acpi: AcpiDigests | None) -> ImageRegisters:
    """What a VM of this shape boots to from these files (any memory size QEMU accepts, unlike
    the document path). MeasurementError for malformed files or an initrd QEMU cannot place."""
    sections = parse_tdvf_sections(files.firmware)
    rtmr0 = None
    if acpi is not None:
        witness = decode_witness(td_hob_witness(sections))
        rtmr0 = rtmr0_events(td_hob_digest(witness, shape.memory_size), acpi)
    kernel = patched_kernel_digest(files.kernel, len(files.initrd), shape.memory_size)
    return ImageRegisters(
        mrtd=tdvf_mrtd(files.firmware, sections, two_pass=shape.two_pass_add_pages),
        rtmr0_events=rtmr0,
        rtmr1_events=rtmr1_events(kernel),
        rtmr2_events=tuple(rtmr2_events(files.metadata.cmdline, files.initrd)),
    )


def check_manifest(checksum_file: bytes, contents: Mapping[str, bytes]) -> bytes:
    """The os_image_hash (sha256 of `sha256sum.txt`) once every named file hashes to its entry.
    MeasurementError names the first file missing from the manifest or differing from it."""
    for name, data in contents.items():
        listed = manifest_entry(checksum_file, name)
        if hashlib.sha256(data).digest() != listed:
            raise MeasurementError(f"{name} does not hash to its {CHECKSUM_FILE} entry")
    return hashlib.sha256(checksum_file).digest()
