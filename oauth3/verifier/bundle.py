"""Evidence bundles: what an online check fetched, saved as JSON to re-verify it offline."""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .steps import Evidence

BUNDLE_FORMAT = "oauth3-evidence-bundle/v1"


class BundleError(Exception):
    """A bundle or an /attestation response is malformed (an I/O error, exit code 2)."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """The exact /info bytes, the /attestation response, the nonce sent, where and when,
    and the collateral used (QuoteCollateralV3 JSON object), if any."""

    url: str
    fetched_at: int
    nonce: bytes | None
    info: bytes
    attestation: dict[str, Any]
    collateral: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The bundle's JSON object."""
        return {
            "format": BUNDLE_FORMAT,
            "url": self.url,
            "fetchedAt": datetime.fromtimestamp(self.fetched_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "nonce": self.nonce.hex() if self.nonce is not None else None,
            "info": base64.b64encode(self.info).decode(),
            "attestation": self.attestation,
            "collateral": self.collateral,
        }


def save_bundle(path: Path, bundle: Bundle) -> None:
    """Write the bundle atomically (temp file in the same folder, then rename); OSError on I/O."""
    data = orjson.dumps(bundle.as_json(), option=orjson.OPT_INDENT_2) + b"\n"
    directory = path.parent if str(path.parent) else Path()
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _field(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise BundleError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


def _optional_hex(doc: dict[str, Any], key: str, where: str) -> bytes | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BundleError(f"{where}: {key!r} must be a hex string or null")
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
    """Parse a bundle written by `save_bundle`; BundleError names what is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"bundle is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError("bundle must be a JSON object")
    if doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle format is {doc.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    try:
        fetched_at = parse_time(_field(doc, "fetchedAt", str, "bundle"))
    except ValueError as exc:
        raise BundleError(f"bundle: fetchedAt: {exc}") from None
    collateral = doc.get("collateral")
    if collateral is not None and not isinstance(collateral, dict):
        raise BundleError("bundle: 'collateral' must be an object or null")
    return Bundle(
        url=_field(doc, "url", str, "bundle"),
        fetched_at=fetched_at,
        nonce=_optional_hex(doc, "nonce", "bundle"),
        info=_b64(_field(doc, "info", str, "bundle"), "bundle: 'info'"),
        attestation=_field(doc, "attestation", dict, "bundle"),
        collateral=collateral,
    )


def evidence_from_bundle(bundle: Bundle) -> Evidence:
    """The evidence an /attestation response carries, bound to the /info bytes and the nonce."""
    where = "/attestation response"
    response = bundle.attestation
    event_log = response.get("eventLog")
    if event_log is not None and not isinstance(event_log, str):
        raise BundleError(f"{where}: 'eventLog' must be a string")
    layout = response.get("layout")
    if layout is not None and not isinstance(layout, str):
        raise BundleError(f"{where}: 'layout' must be a string")
    return Evidence(
        quote=_b64(_field(response, "quote", str, where), f"{where}: 'quote'"),
        event_log=event_log,
        bound=True,
        info=bundle.info,
        declared_report_data=_optional_hex(response, "reportData", where),
        layout=layout,
        nonce=bundle.nonce,
    )
