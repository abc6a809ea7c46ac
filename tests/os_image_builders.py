"""Synthetic dstack OS image files for the measurement tests: a TDVF firmware, a PE bzImage."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from oauth3.attestation.os_image import ImageFiles, parse_image_metadata
from oauth3.attestation.tdvf import (
    ATTRIBUTE_MR_EXTEND,
    ATTRIBUTE_PAGE_AUG,
    PAGE_SIZE,
    SECTION_TD_HOB,
    SECTION_TEMP_MEM,
    TdvfSection,
)

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
OTHER_GUID = uuid.UUID("dc5d8d6a-2a9d-4a3d-8c3f-0d4f2a6b1e77").bytes_le

# the TD_HOB/TEMP_MEM layout of dstack's tdvf.rs unit test (witness 80100904000609020b021010)
DSTACK_HOB_SECTIONS = (
    TdvfSection(0, 0, 0x810000, 0x10000, SECTION_TEMP_MEM, 0),
    TdvfSection(0, 0, 0x80B000, 0x2000, SECTION_TEMP_MEM, 0),
    TdvfSection(0, 0, 0x809000, 0x2000, SECTION_TD_HOB, 0),
    TdvfSection(0, 0, 0x800000, 0x6000, SECTION_TEMP_MEM, 0),
)


@dataclass(frozen=True)
class Firmware:
    """A synthetic OVMF image and the sections its descriptor lists."""

    image: bytes
    sections: tuple[TdvfSection, ...]


def build_firmware(pages: int = 3, seed: int = 1) -> Firmware:
    """An image: `pages` measured pages (BFV), one unmeasured (CFV), one PAGE_AUG, dstack's HOB."""
    body = bytes((seed * 131 + i * 7 + (i >> 8)) & 0xFF for i in range((pages + 1) * PAGE_SIZE))
    bfv = TdvfSection(0, pages * PAGE_SIZE, 0xFFC00000, pages * PAGE_SIZE, 1, ATTRIBUTE_MR_EXTEND)
    cfv = TdvfSection(pages * PAGE_SIZE, PAGE_SIZE, 0xFFB00000, PAGE_SIZE, 0, 0)
    aug = TdvfSection(0, 0, 0x900000, 2 * PAGE_SIZE, 4, ATTRIBUTE_PAGE_AUG)
    sections = (bfv, cfv, aug, *DSTACK_HOB_SECTIONS)
    return Firmware(firmware_image(body, sections), sections)


def firmware_image(body: bytes, sections: tuple[TdvfSection, ...]) -> bytes:
    """`body`, then a TDVF v1 descriptor listing `sections`, then the OVMF GUID table whose
    metadata-offset entry points at it (behind another entry), then the footer."""
    descriptor = struct.pack("<4sIII", b"TDVF", 16 + 32 * len(sections), 1, len(sections))
    descriptor += b"".join(struct.pack("<IIQQII", *vars_of(s)) for s in sections)
    other_entry = b"\xaa" * 6 + struct.pack("<H", 24) + OTHER_GUID
    tables_len = 24 + 22 + len(other_entry)
    tail = struct.pack("<H", tables_len) + FOOTER_GUID + b"\x90" * 32
    total = len(body) + len(descriptor) + tables_len + len(tail)
    back = total - len(body)
    meta_entry = struct.pack("<IH", back, 22) + METADATA_OFFSET_GUID
    image = body + descriptor + b"\x00" * 24 + meta_entry + other_entry + tail
    assert len(image) == total
    return image


def vars_of(section: TdvfSection) -> tuple[int, ...]:
    """A section's six fields in descriptor order."""
    return (
        section.data_offset,
        section.raw_size,
        section.memory_address,
        section.memory_size,
        section.section_type,
        section.attributes,
    )


def build_bzimage(
    *,
    size: int = 0x4000,
    protocol: int = 0x20F,
    xloadflags: int = 0x40,
    initrd_addr_max: int = 0x3FFFFFFF,
    cert_table: bytes = b"",
    trailer: bytes = b"",
    pe32: bool = False,
    bss: bool = False,
) -> bytes:
    """A PE32+ (or PE32) bzImage: PE headers at 0x40, setup header at 0x1f1, three sections
    listed out of file order (and a .bss without file bytes), then optional trailing bytes and an
    optional certificate table."""
    image = bytearray(size)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x40)
    image[0x40:0x44] = b"PE\0\0"
    sections = [
        (".text", 0x2000, size - 0x2000),
        (".setup", 0x200, 0xE00),
        (".data", 0x1000, 0x1000),
    ]
    directories = 96 if pe32 else 112
    optional_size = directories + 16 * 8
    count = len(sections) + bss
    machine = 0x14C if pe32 else 0x8664
    struct.pack_into("<HHIIIHH", image, 0x44, machine, count, 0, 0, 0, optional_size, 0x206)
    optional = 0x58
    struct.pack_into("<H", image, optional, 0x10B if pe32 else 0x20B)
    struct.pack_into("<I", image, optional + 60, 0x200)
    struct.pack_into("<I", image, optional + 64, 0x12345678)
    struct.pack_into("<I", image, optional + directories - 4, 16)
    for index, (name, offset, length) in enumerate(sections):
        entry = optional + optional_size + 40 * index
        struct.pack_into("<8sIIII", image, entry, name.encode(), length, offset, length, offset)
    if bss:
        entry = optional + optional_size + 40 * len(sections)
        struct.pack_into("<8sIIII", image, entry, b".bss", 0x1000, size, 0, 0)
    for i in range(0x200, size):
        image[i] = (i * 13 + (i >> 9)) & 0xFF
    image[0x1F1:0x268] = bytes(0x268 - 0x1F1)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, protocol)
    image[0x211] = 0x01
    struct.pack_into("<I", image, 0x22C, initrd_addr_max)
    struct.pack_into("<H", image, 0x236, xloadflags)
    out = bytes(image) + trailer
    if cert_table:
        struct.pack_into("<II", image, optional + directories + 32, len(out), len(cert_table))
        out = bytes(image) + trailer + cert_table
    return out


ROOTFS = "ab" * 32
CMDLINE = f"console=ttyS0 dstack.rootfs_hash={ROOTFS} dstack.fde=1"


def image_dir_files(cmdline: str = CMDLINE) -> dict[str, bytes]:
    """A synthetic image directory's files by name (dstack 0.6.0's TD HOB layout)."""
    metadata = {
        "bios": "ovmf.fd",
        "kernel": "bzImage",
        "initrd": "initramfs.cpio.gz",
        "cmdline": cmdline,
        "version": "0.6.0",
        "is_dev": False,
    }
    return {
        "metadata.json": json.dumps(metadata).encode(),
        "ovmf.fd": build_firmware(pages=2).image,
        "bzImage": build_bzimage(),
        "initramfs.cpio.gz": bytes(range(256)) * 40,
    }


def as_files(contents: dict[str, bytes]) -> ImageFiles:
    """The ImageFiles a reader of this directory would pass on."""
    metadata = parse_image_metadata(contents["metadata.json"])
    return ImageFiles(
        metadata, contents[metadata.bios], contents[metadata.kernel], contents[metadata.initrd]
    )


def sha256sum(contents: dict[str, bytes]) -> bytes:
    """A `sha256sum.txt` listing these files, sorted by name as coreutils would print them."""
    lines = [f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in contents.items()]
    return "".join(sorted(lines, key=lambda line: line.split()[1])).encode()


def write_image_dir(directory: Path, contents: dict[str, bytes]) -> Path:
    """The files written into `directory` (created), which is returned."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return directory
