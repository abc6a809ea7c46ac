"""The Authenticode-style SHA-384 that OVMF measures for a PE/COFF image, exactly as dstack-mr does.

Differences from Microsoft's Authenticode, kept on purpose because the measured value depends on
them: bytes past the sections are hashed only when a certificate table is declared, and the whole
input is zero-padded to a multiple of 8 bytes (`kernel.rs:24-130`).
"""

from __future__ import annotations

import hashlib

from .errors import MeasurementError

_SECURITY_DIRECTORY = 4
_PE32_PLUS_MAGIC = 0x20B


def _read_le(data: bytes, offset: int, size: int, what: str) -> int:
    if offset + size > len(data):
        raise MeasurementError(f"PE: {what} at byte {offset} lies past the end of the image")
    return int.from_bytes(data[offset : offset + size], "little")


def _header_layout(data: bytes) -> tuple[list[tuple[int, int]], int, int, int]:
    """The header byte ranges hashed, the security directory's offset, the section table's offset
    and the number of sections."""
    pe_offset = _read_le(data, 0x3C, 4, "e_lfanew")
    if data[pe_offset : pe_offset + 4] != b"PE\0\0":
        raise MeasurementError(f"PE: no PE signature at byte {pe_offset}")
    coff = pe_offset + 4
    optional = coff + 20
    optional_size = _read_le(data, coff + 16, 2, "SizeOfOptionalHeader")
    magic = _read_le(data, optional, 2, "optional header magic")
    checksum = optional + 64
    security = optional + (112 if magic == _PE32_PLUS_MAGIC else 96) + 8 * _SECURITY_DIRECTORY
    headers_end = _read_le(data, optional + 60, 4, "SizeOfHeaders")
    if not security + 8 <= headers_end <= len(data):
        raise MeasurementError(
            f"PE: SizeOfHeaders {headers_end} does not cover the data directories"
        )
    ranges = [(0, checksum), (checksum + 4, security), (security + 8, headers_end)]
    count = _read_le(data, coff + 2, 2, "NumberOfSections")
    return ranges, security, optional + optional_size, count


def authenticode_sha384(data: bytes) -> bytes:
    """SHA-384 over the image minus CheckSum, the security directory and the certificate table,
    sections in file-offset order, then zero padding to a multiple of 8 (dstack's variant)."""
    ranges, security, section_table, count = _header_layout(data)
    digest = hashlib.sha384()
    for start, end in ranges:
        digest.update(data[start:end])
    hashed = ranges[-1][1]
    sections = []
    for index in range(count):
        entry = section_table + 40 * index
        size = _read_le(data, entry + 16, 4, f"section {index} SizeOfRawData")
        offset = _read_le(data, entry + 20, 4, f"section {index} PointerToRawData")
        if size:
            sections.append((offset, size))
    for offset, size in sorted(sections, key=lambda s: s[0]):
        digest.update(data[offset : offset + size])
        hashed += size
    cert_offset = _read_le(data, security, 4, "certificate table offset")
    cert_size = _read_le(data, security + 4, 4, "certificate table size")
    trailing = len(data) - hashed
    if cert_offset and cert_size and trailing > cert_size:
        digest.update(data[hashed : hashed + trailing - cert_size])
    digest.update(bytes(-len(data) % 8))
    return digest.digest()
