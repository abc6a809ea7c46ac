"""The TD HOB QEMU hands TDVF, rebuilt from dstack's TdHobWitnessV1 and the VM's memory size.

Its SHA-384 is RTMR0's first event. The witness (dstack `dstack-mr/src/tdvf.rs:334-406`) lists the
memory TDVF accepts before boot (its TD_HOB and TEMP_MEM sections) as 4 KiB page ranges in
unsigned LEB128: base page, TD_HOB page minus base, range count, then per range its start page
minus base and its page count. The HOB (`tdx.rs:122-200`, `tdvf.rs:438-545`) is a v9 handoff HOB
followed by one resource HOB per memory range: accepted ranges type 0, the rest of RAM type 7.
From 0xB0000000 bytes of RAM on, the last range is split at 2 GiB and its top part moved above
4 GiB (the PCI hole), exactly as dstack does it.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import MeasurementError

PAGE_SIZE = 0x1000
HIGH_MEMORY_SPLIT = 0xB0000000
LOW_MEMORY_TOP = 0x80000000
HIGH_MEMORY_BASE = 0x100000000
_U64 = 1 << 64


@dataclass(frozen=True, slots=True)
class TdHobWitness:
    """The accepted page ranges and the TD HOB's address: all of the HOB that is image-static."""

    td_hob_address: int
    ranges: tuple[tuple[int, int], ...]  # (start address, length) in bytes, sorted, disjoint

    def encode(self) -> bytes:
        """dstack's TdHobWitnessV1 bytes for these ranges (ranges must be page-aligned)."""
        if not self.ranges:
            raise MeasurementError("a TD HOB witness needs at least one accepted range")
        base_page = self.ranges[0][0] // PAGE_SIZE
        out = bytearray()
        _put_varuint(base_page, out)
        _put_varuint(self.td_hob_address // PAGE_SIZE - base_page, out)
        _put_varuint(len(self.ranges), out)
        for start, length in self.ranges:
            _put_varuint(start // PAGE_SIZE - base_page, out)
            _put_varuint(length // PAGE_SIZE, out)
        return bytes(out)


def witness_from_sections(sections: Sequence[tuple[int, int, bool]]) -> TdHobWitness:
    """The witness for TDVF sections given as (memory address, memory size, is the TD_HOB one),
    TD_HOB and TEMP_MEM only. MeasurementError as dstack refuses: none, an empty one, overlap,
    no or two TD_HOB sections, TD_HOB below the lowest range."""
    if not sections:
        raise MeasurementError("TDVF metadata has no TD_HOB/TEMP_MEM sections")
    hob_pages = [address // PAGE_SIZE for address, _, is_hob in sections if is_hob]
    if len(hob_pages) != 1:
        raise MeasurementError(f"TDVF metadata has {len(hob_pages)} TD_HOB sections, not one")
    pages = sorted((address // PAGE_SIZE, size // PAGE_SIZE) for address, size, _ in sections)
    for (start, count), (next_start, _) in itertools.pairwise(pages):
        if count == 0 or next_start < start + count:
            raise MeasurementError("TD HOB witness ranges must be non-empty and not overlap")
    if pages[-1][1] == 0:
        raise MeasurementError("TD HOB witness range must not be empty")
    if hob_pages[0] < pages[0][0]:
        raise MeasurementError("TD_HOB page is below the TD HOB witness base page")
    return TdHobWitness(
        hob_pages[0] * PAGE_SIZE, tuple((s * PAGE_SIZE, c * PAGE_SIZE) for s, c in pages)
    )


def decode_witness(data: bytes) -> TdHobWitness:
    """Read TdHobWitnessV1 bytes. MeasurementError for a truncated or oversized varuint, an
    address beyond 64 bits or trailing bytes (dstack `tdx.rs:102-145`)."""
    reader = _VarReader(data)
    base_page = reader.varuint()
    hob_page = base_page + reader.varuint()
    ranges: list[tuple[int, int]] = []
    for _ in range(reader.varuint()):
        start = (base_page + reader.varuint()) * PAGE_SIZE
        length = reader.varuint() * PAGE_SIZE
        if start >= _U64 or length >= _U64:
            raise MeasurementError("TD HOB witness range overflows 64 bits")
        ranges.append((start, length))
    if reader.offset != len(data):
        raise MeasurementError("TD HOB witness has trailing bytes")
    if hob_page * PAGE_SIZE >= _U64:
        raise MeasurementError("TD HOB base address overflows 64 bits")
    return TdHobWitness(hob_page * PAGE_SIZE, tuple(ranges))


def td_hob(witness: TdHobWitness, memory_size: int) -> bytes:
    """The TD HOB bytes QEMU builds for `memory_size` bytes of RAM (dstack `tdx.rs:122-200`)."""
    if memory_size <= 0:
        raise MeasurementError(f"memory size {memory_size} is not positive")
    ranges = _accept_all(memory_size, witness.ranges)
    body = bytearray()
    *lower, (_, last_start, last_end) = ranges
    for accepted, start, end in lower:
        body += _resource_hob(0x00 if accepted else 0x07, start, end - start)
    if memory_size >= HIGH_MEMORY_SPLIT:
        if last_start < LOW_MEMORY_TOP:
            body += _resource_hob(0x07, last_start, LOW_MEMORY_TOP - last_start)
        if last_end > LOW_MEMORY_TOP:
            body += _resource_hob(0x07, HIGH_MEMORY_BASE, last_end - LOW_MEMORY_TOP)
    else:
        body += _resource_hob(0x07, last_start, last_end - last_start)
    hob_length = 56 + len(body)
    end_of_hob_list = (witness.td_hob_address + hob_length + 8) % _U64
    handoff = struct.pack("<HH4sI4s32sQ", 0x0001, 56, b"", 9, b"", b"", end_of_hob_list)
    return handoff + bytes(body)


def td_hob_digest(witness: TdHobWitness, memory_size: int) -> bytes:
    """SHA-384 of `td_hob`: RTMR0's first event."""
    return hashlib.sha384(td_hob(witness, memory_size)).digest()


def _resource_hob(resource_type: int, start: int, length: int) -> bytes:
    if length < 0:
        raise MeasurementError("invalid memory range: end below start")
    return struct.pack(
        "<HH4s16sB3sIQQ", 0x0003, 48, b"", b"", resource_type, b"", 7, start % _U64, length % _U64
    )


def _accept_all(
    memory_size: int, accepted: Sequence[tuple[int, int]]
) -> list[tuple[bool, int, int]]:
    """dstack's MemoryAcceptor: RAM as (accepted, start, end) ranges sorted by start."""
    ranges = [(False, 0, memory_size)]
    for start, length in accepted:
        end = start + length
        if start >= end:
            continue
        kept: list[tuple[bool, int, int]] = []
        for is_accepted, range_start, range_end in ranges:
            if is_accepted or range_end <= start or range_start >= end:
                kept.append((is_accepted, range_start, range_end))
                continue
            if range_start < start:
                kept.append((False, range_start, start))
            if range_end > end:
                kept.append((False, end, range_end))
        kept.append((True, start, end))
        ranges = sorted(kept, key=lambda r: r[1])
    return ranges


def _put_varuint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


class _VarReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def varuint(self) -> int:
        value = shift = 0
        while True:
            if self.offset >= len(self.data):
                raise MeasurementError("truncated TD HOB witness varuint")
            byte = self.data[self.offset]
            self.offset += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= 64:
                raise MeasurementError("TD HOB witness varuint is too large")
