"""Evidence bundles: what an online check fetched, saved as JSON to re-verify it offline.

A bundle is evidence, not a verdict: its `fetchedAt` and `nonce` are what it says about itself.
Offline, the check time is now (or `--at`), and freshness is never established.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from oauth3.attestation import AttestationError, parse_strict_json

from .errors import VerifierError
from .files import write_atomically
from .step_basics import Evidence
from .verdict import rfc3339

BUNDLE_FORMAT = "oauth3-evidence-bundle/v2"
LATEST_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second RFC 3339 can name
READABLE_FORMATS = ("oauth3-evidence-bundle/v1", BUNDLE_FORMAT)


class BundleError(VerifierError):
    """A bundle or an /attestation response is malformed (an I/O error, exit code 2)."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """The exact /info bytes, the /attestation response, the nonce sent, where and when, the
    collateral used (QuoteCollateralV3 JSON object) and the hashes that name it."""

    url: str
    fetched_at: int
    nonce: bytes | None
    info: bytes
    attestation: dict[str, Any]
    collateral: dict[str, Any] | None = None
    collateral_identity: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The bundle's JSON object."""
        return {
            "format": BUNDLE_FORMAT,
            "url": self.url,
            "fetchedAt": rfc3339(self.fetched_at),
            "nonce": self.nonce.hex() if self.nonce is not None else None,
            "info": base64.b64encode(self.info).decode(),
            "attestation": self.attestation,
            "collateral": self.collateral,
            "collateralIdentity": self.collateral_identity,
        }


def save_bundle(path: Path, bundle: Bundle) -> None:
    """Write the bundle atomically (temp file in the same folder, then rename); OSError on I/O."""
    write_atomically(path, orjson.dumps(bundle.as_json(), option=orjson.OPT_INDENT_2) + b"\n")


def _field(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise BundleError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


def _optional(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        raise BundleError(f"{where}: {key!r} must be a {kind.__name__} or null")
    return value


def _optional_hex(doc: dict[str, Any], key: str, where: str) -> bytes | None:
    value = _optional(doc, key, str, where)
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BundleError(f"{where}: {key!r} is not valid hex") from None


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{what} is not valid base64") from None


def parse_time(text: str) -> int:
    """RFC 3339 (`Z` or an offset) or unix seconds, as unix seconds; ValueError otherwise."""
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    moment = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone (add Z or an offset)")
    return int(moment.timestamp())


def load_bundle(data: bytes) -> Bundle:
    """Parse a bundle written by `save_bundle` (v1 or v2); BundleError names what is wrong."""
    try:
        doc = parse_strict_json(data)
    except AttestationError as exc:
        raise BundleError(f"bundle is not strict JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError("bundle must be a JSON object")
    if doc.get("format") not in READABLE_FORMATS:
        raise BundleError(f"bundle format is {doc.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    try:
        fetched_at = parse_time(_field(doc, "fetchedAt", str, "bundle"))
    except (ValueError, OverflowError) as exc:
        raise BundleError(f"bundle: fetchedAt: {exc}") from None
    if not 0 <= fetched_at <= LATEST_TIME:
        raise BundleError("bundle: fetchedAt is outside 1970..9999")
    return Bundle(
        url=_field(doc, "url", str, "bundle"),
        fetched_at=fetched_at,
        nonce=_optional_hex(doc, "nonce", "bundle"),
        info=_b64(_field(doc, "info", str, "bundle"), "bundle: 'info'"),
        attestation=_field(doc, "attestation", dict, "bundle"),
        collateral=_optional(doc, "collateral", dict, "bundle"),
        collateral_identity=_optional(doc, "collateralIdentity", dict, "bundle"),
    )


def evidence_from_bundle(bundle: Bundle, *, online: bool) -> Evidence:
    """The evidence an /attestation response carries, bound to the /info bytes and the nonce;
    `online` when this run fetched it (its nonce is then one this run drew)."""
    where = "/attestation response"
    response = bundle.attestation
    return Evidence(
        quote=_b64(_field(response, "quote", str, where), f"{where}: 'quote'"),
        event_log=_optional(response, "eventLog", str, where),
        origin="online" if online else "bundle",
        vm_config=_optional(response, "vmConfig", str, where),
        info=bundle.info,
        declared_report_data=_optional_hex(response, "reportData", where),
        layout=_optional(response, "layout", str, where),
        nonce=bundle.nonce,
        fetched_at=bundle.fetched_at,
        merkle=response.get("merkle"),
    )
