"""A strict codec for the CBOR subset dstack's measurement documents use (RFC 8949).

Decoding accepts exactly one item made of unsigned and negative integers, byte and text strings,
arrays, maps, false, true and null, and refuses everything else: indefinite lengths, tags, floats,
non-minimal length encodings, duplicate map keys, invalid UTF-8 and trailing bytes. So a document
has one encoding, and `encode(decode(b)) == b` holds for every `b` this module accepts whose maps
keep their keys in the order the producer wrote them (dstack's `ciborium` writes struct fields in
declaration order, not RFC 8949's length-first order, and `encode` keeps insertion order to match).
Own code rather than a library: the subset is small, and a strict decoder is easier to audit than
a general one configured not to be lenient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

from .errors import CborError

CborValue: TypeAlias = (
    "int | bytes | str | bool | list[CborValue] | dict[CborKey, CborValue] | None"
)
CborKey: TypeAlias = "int | bytes | str"

MAX_DEPTH = 16
_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)
_SIMPLE_VALUES: dict[int, CborValue] = {20: False, 21: True, 22: None}


def encode(value: object) -> bytes:
    """The minimal definite-length encoding of `value` (maps in insertion order). CborError for a
    value outside the subset (float, tag, integer beyond 64 bits, non-scalar map key)."""
    out = bytearray()
    _encode_into(value, out, 0)
    return bytes(out)


def _head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes([major << 5 | argument])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes([major << 5 | extra]) + argument.to_bytes(size, "big")
    raise CborError(f"integer {argument} does not fit 64 bits")


def _encode_into(value: object, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CborError(f"nesting deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool):
        out += bytes([0xF6 if value is None else 0xF5 if value else 0xF4])
    elif isinstance(value, int):
        out += _head(_UINT, value) if value >= 0 else _head(_NINT, -1 - value)
    elif isinstance(value, bytes | bytearray):
        out += _head(_BYTES, len(value)) + bytes(value)
    elif isinstance(value, str):
        text = value.encode()
        out += _head(_TEXT, len(text)) + text
    elif isinstance(value, Mapping):
        out += _head(_MAP, len(value))
        for key, item in value.items():
            if not isinstance(key, int | bytes | str) or isinstance(key, bool):
                raise CborError(f"map key {key!r} is not an integer, byte or text string")
            _encode_into(key, out, depth + 1)
            _encode_into(item, out, depth + 1)
    elif isinstance(value, Sequence):
        out += _head(_ARRAY, len(value))
        for item in value:
            _encode_into(item, out, depth + 1)
    else:
        raise CborError(f"{type(value).__name__} is outside the CBOR subset")


def decode(data: bytes) -> CborValue:
    """The one item `data` encodes. CborError (naming the byte offset) for anything outside the
    subset, a non-minimal or indefinite length, a duplicate map key or trailing bytes."""
    reader = _CborReader(bytes(data))
    value = reader.item(0)
    if reader.offset != len(reader.data):
        raise CborError(
            f"{len(reader.data) - reader.offset} trailing bytes at byte {reader.offset}"
        )
    return value


class _CborReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise CborError(f"truncated: {size} bytes needed at byte {self.offset}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def head(self) -> tuple[int, int, int]:
        start = self.offset
        initial = self.take(1)[0]
        major, extra = initial >> 5, initial & 0x1F
        if extra < 24:
            return major, extra, start
        if extra > 27:
            raise CborError(f"indefinite length or reserved value 0x{initial:02x} at byte {start}")
        size = 1 << (extra - 24)
        argument = int.from_bytes(self.take(size), "big")
        if argument < (24 if size == 1 else 1 << (4 * size)):
            raise CborError(f"non-minimal length or integer encoding at byte {start}")
        return major, argument, start

    def item(self, depth: int) -> CborValue:
        if depth > MAX_DEPTH:
            raise CborError(f"nesting deeper than {MAX_DEPTH} at byte {self.offset}")
        major, argument, start = self.head()
        if major in (_UINT, _NINT):
            return argument if major == _UINT else -1 - argument
        if major in (_BYTES, _TEXT):
            return self.string(major, argument, start)
        if major == _ARRAY:
            return [self.item(depth + 1) for _ in range(argument)]
        if major == _MAP:
            return self.map(argument, depth)
        if major == _SIMPLE and argument in _SIMPLE_VALUES:
            return _SIMPLE_VALUES[argument]
        raise CborError(
            f"major type {major} value {argument} at byte {start} is outside the subset"
        )

    def string(self, major: int, size: int, start: int) -> bytes | str:
        raw = self.take(size)
        if major == _BYTES:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CborError(f"text string at byte {start} is not UTF-8") from None

    def map(self, count: int, depth: int) -> dict[CborKey, CborValue]:
        result: dict[CborKey, CborValue] = {}
        for _ in range(count):
            at = self.offset
            key = self.item(depth + 1)
            if not isinstance(key, int | bytes | str) or isinstance(key, bool):
                raise CborError(f"map key at byte {at} is not an integer, byte or text string")
            if key in result:
                raise CborError(f"duplicate map key {key!r} at byte {at}")
            result[key] = self.item(depth + 1)
        return result
