"""Recognise the shapes attestation evidence arrives in and extract the quote and event log."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from .errors import EvidenceError
from .strict_json import StrictJSONError, parse_strict_json

RAW_QUOTE_PREFIXES = (b"\x04\x00", b"\x05\x00")


@dataclass(frozen=True, slots=True)
class ReceivedQuote:
    """A quote with whatever accompanied it; `kind` names the shape it was read from."""

    kind: str
    quote: bytes
    event_log: str | None = None
    report_data: bytes | None = None
    document: dict[str, Any] | None = None


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceError(f"{what} must be a hex string")
    text = value.strip()
    text = text.removeprefix("0x").removeprefix("0X")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise EvidenceError(f"{what} is not valid hex") from None


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError(f"{what} is not valid base64") from None


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EvidenceError(f"{key!r} must be a string")
    return value


def evidence_from_document(doc: dict[str, Any]) -> ReceivedQuote:
    """Read a decoded JSON response: dstack GetQuote, legacy Tappd, or an oauth3 /attestation."""
    if "quote" not in doc:
        raise EvidenceError("JSON document has no 'quote' field")
    if "eventLog" in doc or "reportData" in doc:
        report_data = doc.get("reportData")
        return ReceivedQuote(
            kind="oauth3-attestation",
            quote=_b64(doc["quote"], "quote"),
            event_log=_optional_str(doc, "eventLog"),
            report_data=_hex(report_data, "reportData") if report_data is not None else None,
            document=doc,
        )
    kind = "tappd-quote" if "hash_algorithm" in doc else "dstack-getquote"
    report_data = doc.get("report_data")
    return ReceivedQuote(
        kind=kind,
        quote=_hex(doc["quote"], "quote"),
        event_log=_optional_str(doc, "event_log"),
        report_data=_hex(report_data, "report_data") if report_data else None,
        document=doc,
    )


def load_evidence(data: bytes) -> ReceivedQuote:
    """Accept a raw quote, hex text (optional 0x), or a JSON response; EvidenceError otherwise."""
    if not data:
        raise EvidenceError("input is empty")
    if data.startswith(RAW_QUOTE_PREFIXES):
        return ReceivedQuote(kind="raw-quote", quote=bytes(data))
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise EvidenceError("input is neither a binary TDX quote nor UTF-8 text") from None
    if text.startswith("{"):
        try:
            doc = parse_strict_json(text)
        except StrictJSONError as exc:
            raise EvidenceError(f"input looks like JSON but does not parse: {exc}") from None
        if not isinstance(doc, dict):
            raise EvidenceError("JSON input must be an object")
        return evidence_from_document(doc)
    quote = _hex(text, "input")
    if not quote:
        raise EvidenceError("input is empty")
    return ReceivedQuote(kind="hex-quote", quote=quote)
