"""The dstack guest agent's JSON request rules, with serde_json's error texts and positions.

Upstream decodes a POST body with `serde_json::from_slice` into a prost struct whose `bytes`
fields are hex strings (`trim_start_matches("0x")`, then `hex::decode`). Where serde reports an
error it appends ` at line L column C`, C being a byte count on that line:

* a value of the wrong type (`{"report_data":5}`) is reported once the value has been read, so C
  is the number of bytes up to the end of that value (16 here);
* an error raised after a field's string was read (bad hex, a duplicate field) carries no
  position until it reaches the struct, which first consumes whitespace and a closing `}` if one
  follows; so `{"report_data":"abc"}` gives column 21 (the whole body) while
  `{"report_data":"abc","x":1}` gives column 20 (just after the string);
* syntax errors point at the offending byte (1-based), as serde's `peek_error` does.

Upstream's protobuf mode is not implemented; callers refuse non-JSON requests instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

_WHITESPACE = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class RpcError(Exception):
    """An error the agent reports as HTTP 400 with body `{"error": message}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def rust_debug(text: str, quote: str) -> str:
    """Format a char (quote `'`) or str (quote `"`) the way Rust's `{:?}` does."""
    out = []
    for char in text:
        code = ord(char)
        if char in (quote, "\\"):
            out.append("\\" + char)
        elif char in "\n\r\t\0":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}[char])
        elif code < 0x20 or 0x7F <= code < 0xA0 or code == 0xAD:
            out.append(f"\\u{{{code:x}}}")
        else:
            out.append(char)
    return quote + "".join(out) + quote


def decode_hex(text: str) -> bytes:
    """Decode like upstream: strip leading `0x` (repeatedly), then hex 0.4's rules and messages."""
    while text.startswith("0x"):
        text = text[2:]
    data = text.encode()
    if len(data) % 2:
        raise RpcError("Odd number of digits")
    for index, byte in enumerate(data):
        if byte not in _HEX_DIGITS:
            # hex 0.4 reports the offending byte cast to a char (Latin-1 for non-ASCII bytes)
            raise RpcError(
                f"Invalid character {rust_debug(chr(byte), chr(39))} at position {index}"
            )
    return bytes.fromhex(text)


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


class _BodyCursor:
    """A cursor over the body text that reports serde_json-style positions in bytes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.index = 0

    def position(self, index: int) -> str:
        start = self.text.rfind("\n", 0, index) + 1
        line = 1 + self.text.count("\n", 0, start)
        column = len(self.text[start:index].encode())
        return f"line {line} column {column}"

    def error(self, message: str) -> RpcError:
        """An error located after the bytes consumed so far (serde's `error`)."""
        return RpcError(f"{message} at {self.position(self.index)}")

    def peek_error(self, message: str) -> RpcError:
        """An error located at the next byte (serde's `peek_error`)."""
        return RpcError(f"{message} at {self.position(min(len(self.text), self.index + 1))}")

    def peek(self) -> str | None:
        while self.index < len(self.text) and self.text[self.index] in _WHITESPACE:
            self.index += 1
        return self.text[self.index] if self.index < len(self.text) else None

    def string(self) -> str:
        """Read a string whose opening quote is at the cursor."""
        try:
            value, end = json.decoder.scanstring(self.text, self.index + 1, True)  # type: ignore[attr-defined]
        except json.JSONDecodeError as exc:
            self.index = exc.pos
            if exc.msg.startswith("Unterminated"):
                self.index = len(self.text)
                raise self.error("EOF while parsing a string") from None
            if "control character" in exc.msg:
                raise self.error(
                    "control character (\\u0000-\\u001F) found while parsing a string"
                ) from None
            raise self.error("invalid escape") from None
        self.index = end
        return str(value)

    def skip_value(self) -> None:
        """Read and discard one value of any type (serde's `ignored_any`)."""
        self.peek()
        try:
            _, end = json.JSONDecoder().raw_decode(self.text, self.index)
        except json.JSONDecodeError as exc:
            self.index = exc.pos
            if exc.pos >= len(self.text):
                raise self.peek_error("EOF while parsing a value") from None
            raise self.peek_error("expected value") from None
        self.index = end

    def invalid_type(self, expected: str) -> RpcError:
        """Read the value at the cursor and describe it as serde's `invalid type` does."""
        start = self.index
        char = self.text[start]
        described: str
        if char in "[{":
            described = "sequence" if char == "[" else "map"
            return self.error(f"invalid type: {described}, expected {expected}")
        if char == '"':
            described = "string " + rust_debug(self.string(), '"')
        elif (match := _NUMBER.match(self.text, start)) is not None:
            literal = match.group()
            self.index = match.end()
            number: Any = json.loads(literal)
            if isinstance(number, int) and _I64_MIN <= number <= _U64_MAX:
                described = f"integer `{number}`"
            else:
                described = f"floating point `{_float_text(float(number))}`"
        else:
            literals = {"n": ("null", "null"), "t": ("true", "boolean `true`")}
            literals["f"] = ("false", "boolean `false`")
            if char not in literals:
                raise self.peek_error("expected value")
            word, described = literals[char]
            self.index = start + 1
            for expected_char in word[1:]:
                if self.index >= len(self.text):
                    raise self.error("EOF while parsing a value")
                self.index += 1
                if self.text[self.index - 1] != expected_char:
                    raise self.error("expected ident")
        return self.error(f"invalid type: {described}, expected {expected}")


def decode_json_args(
    body: bytes, struct_name: str, hex_fields: Collection[str]
) -> dict[str, bytes]:
    """Decode a JSON request body into the given hex fields; RpcError with serde's text otherwise.

    An empty body means all defaults; unknown fields are ignored, as upstream does.
    """
    if not body:
        return {}
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        reader = _BodyCursor(body[: exc.start].decode())
        reader.index = len(reader.text)
        raise reader.peek_error("invalid unicode code point") from None
    reader = _BodyCursor(text)
    values = _struct(reader, struct_name, hex_fields)
    if reader.peek() is not None:
        raise reader.peek_error("trailing characters")
    return values


def _struct(reader: _BodyCursor, struct_name: str, hex_fields: Collection[str]) -> dict[str, bytes]:
    first = reader.peek()
    if first is None:
        raise reader.peek_error("EOF while parsing a value")
    if first != "{":
        raise reader.invalid_type(f"struct {struct_name}")
    reader.index += 1
    try:
        return _members(reader, hex_fields)
    except _Unpositioned as exc:
        if reader.peek() == "}":
            reader.index += 1
        raise reader.error(exc.message) from None


class _Unpositioned(Exception):
    """A custom error (bad hex, duplicate field) that serde positions at the struct's end."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _next_key(reader: _BodyCursor, first: bool) -> str | None:
    """The next member's key, or None after consuming the object's closing brace."""
    char = reader.peek()
    if char == "}":
        reader.index += 1
        return None
    if char is None:
        raise reader.peek_error("EOF while parsing an object")
    if not first:
        if char != ",":
            raise reader.peek_error("expected `,` or `}`")
        reader.index += 1
        char = reader.peek()
        if char == "}":
            raise reader.peek_error("trailing comma")
    if char is None:
        raise reader.peek_error("EOF while parsing a value")
    if char != '"':
        raise reader.peek_error("key must be a string")
    return reader.string()


def _colon(reader: _BodyCursor) -> None:
    char = reader.peek()
    if char is None:
        raise reader.peek_error("EOF while parsing an object")
    if char != ":":
        raise reader.peek_error("expected `:`")
    reader.index += 1


def _hex_value(reader: _BodyCursor) -> bytes:
    char = reader.peek()
    if char is None:
        raise reader.peek_error("EOF while parsing a value")
    if char != '"':
        raise reader.invalid_type("a string")
    try:
        return decode_hex(reader.string())
    except RpcError as exc:
        raise _Unpositioned(exc.message) from None


def _members(reader: _BodyCursor, hex_fields: Collection[str]) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    first = True
    while (key := _next_key(reader, first)) is not None:
        first = False
        if key in hex_fields and key in values:
            raise _Unpositioned(f"duplicate field `{key}`")
        _colon(reader)
        if key in hex_fields:
            values[key] = _hex_value(reader)
        else:
            reader.skip_value()
    return values


def decode_query_args(query: Mapping[str, str], hex_fields: Collection[str]) -> dict[str, bytes]:
    """Decode GET query parameters (already URL-decoded); hex errors carry no position here."""
    return {key: decode_hex(query[key]) for key in hex_fields if key in query}
