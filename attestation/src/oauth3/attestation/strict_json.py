"""Strict JSON for everything a client tool reads: one meaning per document, bounded nesting.

RFC 8259 leaves duplicate member names to each parser (Python and orjson keep the last, others the
first), so a document a guest and a verifier read differently is refused here. Also refused:
NaN/Infinity, lone surrogates, invalid UTF-8, and nesting deeper than MAX_DEPTH (callers walking
the result never recurse further than that). `exact` compares types as JSON has them: `1` is not
`true`, `true` is not `1`.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, TypeVar

import orjson

from .errors import AttestationError

MAX_DEPTH = 64
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
T = TypeVar("T")


class StrictJSONError(AttestationError):
    """A document is not strict JSON: malformed, duplicate member names, or nested too deeply."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise StrictJSONError(f"member {name!r} appears twice in one object")
        document[name] = value
    return document


def nesting_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in well-formed JSON `data` (strings ignored)."""
    brackets = _BRACKETS.findall(_STRINGS.sub(b'""', data))
    return max(itertools.accumulate(_STEP[b[0]] for b in brackets), default=0)


def parse_strict_json(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document; StrictJSONError (an AttestationError) when it is malformed, holds
    a duplicate member name, NaN/Infinity or a lone surrogate, or nests deeper than max_depth."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    try:
        orjson.loads(raw)  # RFC 8259 grammar, UTF-8 and surrogates, before anything recurses
    except orjson.JSONDecodeError as exc:
        raise StrictJSONError(f"not JSON: {exc}") from None
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise StrictJSONError(f"JSON nests {depth} levels deep, more than {max_depth}")
    return json.loads(raw, object_pairs_hook=_no_duplicates)


def is_exactly(value: object, kind: type) -> bool:
    """Whether `value`'s JSON type is exactly `kind` (bool is not int, int is not float)."""
    return type(value) is kind


def json_type_name(kind: type) -> str:
    """How an error names the JSON type `kind`: "true or false", "an integer", "a string"..."""
    return _JSON_NAMES.get(kind, kind.__name__)


def exact(value: object, kind: type[T], what: str) -> T:
    """`value` if its JSON type is exactly `kind` (see `is_exactly`); StrictJSONError naming
    `what` otherwise."""
    if isinstance(value, kind) and is_exactly(value, kind):
        return value
    raise StrictJSONError(f"{what} must be {json_type_name(kind)}")


_JSON_NAMES: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number with a fraction",
    str: "a string",
    list: "an array",
    dict: "an object",
}
