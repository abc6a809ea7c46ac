"""TDVF (OVMF built for TDX): the metadata sections QEMU loads, MRTD from them, the TD HOB witness.

Mirrors dstack-mr's `tdvf.rs`: the footer GUID table at the end of the image points at the `TDVF`
descriptor; each 32-byte section says what QEMU adds to the TD and which pages it measures.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import MeasurementError
from .td_hob import PAGE_SIZE, witness_from_sections

MR_EXTEND_CHUNK = 0x100
ATTRIBUTE_MR_EXTEND = 0x1
ATTRIBUTE_PAGE_AUG = 0x2
SECTION_TD_HOB = 0x2
SECTION_TEMP_MEM = 0x3

_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
_BYTES_AFTER_FOOTER = 32
_SECTION = struct.Struct("<IIQQII")
_DESCRIPTOR = struct.Struct("<4sIII")


@dataclass(frozen=True, slots=True)
class TdvfSection:
    """One TDVF metadata section: where its bytes are in the image and where QEMU puts them."""

    data_offset: int
    raw_size: int
    memory_address: int
    memory_size: int
    section_type: int
    attributes: int


def _u16(data: bytes, offset: int, what: str) -> int:
    if offset < 0 or offset + 2 > len(data):
        raise MeasurementError(f"TDVF: {what} out of range at byte {offset}")
    return int.from_bytes(data[offset : offset + 2], "little")


def _metadata_offset_entry(firmware: bytes) -> bytes:
    footer = len(firmware) - _BYTES_AFTER_FOOTER
    if footer < 18 or firmware[footer - 16 : footer] != _FOOTER_GUID:
        raise MeasurementError("TDVF: no GUID table footer 32 bytes before the end of the firmware")
    tables_len = _u16(firmware, footer - 18, "GUID table length")
    if tables_len == 0 or tables_len > footer - 18:
        raise MeasurementError(f"TDVF: GUID table length {tables_len} does not fit the firmware")
    tables = firmware[footer - 18 - tables_len : footer - 18]
    end = len(tables)
    while end >= 18:
        entry_len = _u16(tables, end - 18, "GUID table entry length")
        if entry_len > end - 18:
            raise MeasurementError(
                f"TDVF: GUID table entry length {entry_len} does not fit the table"
            )
        if tables[end - 16 : end] == _METADATA_OFFSET_GUID:
            return tables[end - 18 - entry_len : end - 18]
        if entry_len == 0:
            break
        end -= entry_len
    raise MeasurementError("TDVF: the GUID table has no TDX metadata offset entry")


def _checked_section(index: int, section: TdvfSection) -> TdvfSection:
    if section.memory_address % PAGE_SIZE or section.memory_size % PAGE_SIZE:
        raise MeasurementError(f"TDVF: section {index} is not page aligned")
    if section.memory_size < section.raw_size:
        raise MeasurementError(f"TDVF: section {index} holds more raw bytes than memory")
    return section


def parse_tdvf_sections(firmware: bytes) -> tuple[TdvfSection, ...]:
    """The TDVF descriptor's sections, in image order; MeasurementError names what is malformed."""
    entry = _metadata_offset_entry(firmware)
    if len(entry) < 4:
        raise MeasurementError("TDVF: the metadata offset entry is shorter than 4 bytes")
    back = int.from_bytes(entry[-4:], "little")
    if back > len(firmware):
        raise MeasurementError(f"TDVF: metadata offset {back} exceeds the firmware size")
    start = len(firmware) - back
    if start + _DESCRIPTOR.size > len(firmware):
        raise MeasurementError("TDVF: the descriptor is truncated")
    signature, _length, version, count = _DESCRIPTOR.unpack_from(firmware, start)
    if signature != b"TDVF":
        raise MeasurementError(f"TDVF: descriptor signature is {signature!r}, not b'TDVF'")
    if version != 1:
        raise MeasurementError(f"TDVF: descriptor version {version} is not supported (only 1)")
    first = start + _DESCRIPTOR.size
    if first + count * _SECTION.size > len(firmware):
        raise MeasurementError(f"TDVF: {count} sections do not fit the firmware")
    return tuple(
        _checked_section(i, TdvfSection(*_SECTION.unpack_from(firmware, first + i * _SECTION.size)))
        for i in range(count)
    )


def _page_add(section: TdvfSection, page: int) -> bytes:
    if section.attributes & ATTRIBUTE_PAGE_AUG:
        return b""
    gpa = section.memory_address + page * PAGE_SIZE
    return b"MEM.PAGE.ADD".ljust(16, b"\0") + gpa.to_bytes(8, "little") + bytes(104)


def _mr_extend(firmware: bytes, section: TdvfSection, page: int) -> bytes:
    if not section.attributes & ATTRIBUTE_MR_EXTEND:
        return b""
    start = section.data_offset + page * PAGE_SIZE
    if start + PAGE_SIZE > len(firmware):
        raise MeasurementError(f"TDVF: measured page at byte {start} lies past the firmware's end")
    parts = []
    for chunk in range(0, PAGE_SIZE, MR_EXTEND_CHUNK):
        gpa = section.memory_address + page * PAGE_SIZE + chunk
        parts.append(b"MR.EXTEND".ljust(16, b"\0") + gpa.to_bytes(8, "little") + bytes(104))
        parts.append(firmware[start + chunk : start + chunk + MR_EXTEND_CHUNK])
    return b"".join(parts)


def tdvf_mrtd(firmware: bytes, sections: Sequence[TdvfSection], *, two_pass: bool) -> bytes:
    """MRTD as QEMU builds it: two-pass (QEMU 8.x: all PAGE.ADDs of a section, then its EXTENDs)
    or single-pass (QEMU >= 9: per page)."""
    digest = hashlib.sha384()
    for section in sections:
        pages = range(section.memory_size // PAGE_SIZE)
        if two_pass:
            for page in pages:
                digest.update(_page_add(section, page))
            for page in pages:
                digest.update(_mr_extend(firmware, section, page))
        else:
            for page in pages:
                digest.update(_page_add(section, page))
                digest.update(_mr_extend(firmware, section, page))
    return digest.digest()


def td_hob_witness(sections: Sequence[TdvfSection]) -> bytes:
    """dstack's TdHobWitnessV1 bytes for the TD_HOB and TEMP_MEM sections (`tdvf.rs:334-406`)."""
    accepted = [
        (s.memory_address, s.memory_size, s.section_type == SECTION_TD_HOB)
        for s in sections
        if s.section_type in {SECTION_TD_HOB, SECTION_TEMP_MEM}
    ]
    return witness_from_sections(accepted).encode()
