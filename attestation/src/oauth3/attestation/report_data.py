"""The report_data layouts: [0:32] is SHA-256 of the /info bytes in both; [32:64] is the client's
32-byte nonce or zeros (`oauth3/v1`), or the Merkle root over a batch's nonces (`oauth3/v2`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import ReportDataError

LAYOUT = "oauth3/v1"
LAYOUT_V2 = "oauth3/v2"  # [32:64] is the Merkle root over a batch's nonces (see merkle.py)
HASH_SIZE = 32
LAYOUTS = (LAYOUT, LAYOUT_V2)
REPORT_DATA_SIZE = 64
NONCE_SIZE = 32
NONCE_HEX_CHARS = 2 * NONCE_SIZE
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class BoundReportData:
    """The two halves of a report_data: `nonce` is the v1 nonce (None when all zero) or the v2
    batch root."""

    info_digest: bytes
    nonce: bytes | None


def parse_nonce(text: str) -> bytes:
    """Decode a client nonce: exactly 64 hex characters, not all zero; ReportDataError otherwise."""
    if len(text) % 2:
        raise ReportDataError(f"nonce has an odd number of hex digits ({len(text)})")
    bad = next((c for c in text if c not in _HEX_DIGITS), None)
    if bad is not None:
        raise ReportDataError(f"nonce contains a non-hex character {bad!r}")
    if len(text) != NONCE_HEX_CHARS:
        raise ReportDataError(
            f"nonce must be {NONCE_HEX_CHARS} hex characters ({NONCE_SIZE} bytes), got {len(text)}"
        )
    nonce = bytes.fromhex(text)
    if not any(nonce):
        raise ReportDataError("an all-zero nonce is refused: it reads the same as no nonce")
    return nonce


def info_digest(info_bytes: bytes) -> bytes:
    """SHA-256 of the exact /info bytes: what report_data[0:32] must hold."""
    return hashlib.sha256(info_bytes).digest()


def report_data_for(digest: bytes, nonce: bytes | None = None) -> bytes:
    """Build the 64 report_data bytes from an /info digest and an optional 32-byte nonce."""
    if len(digest) != HASH_SIZE:
        raise ReportDataError(f"info digest must be 32 bytes, got {len(digest)}")
    if nonce is None:
        return digest + bytes(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ReportDataError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if not any(nonce):
        raise ReportDataError("an all-zero nonce is refused: it reads the same as no nonce")
    return digest + nonce


def batch_report_data_for(digest: bytes, merkle_root: bytes) -> bytes:
    """Build an `oauth3/v2` report_data: the /info digest, then the batch's Merkle root."""
    if len(digest) != HASH_SIZE or len(merkle_root) != HASH_SIZE:
        raise ReportDataError(
            f"info digest and Merkle root must be {HASH_SIZE} bytes each, "
            f"got {len(digest)} and {len(merkle_root)}"
        )
    return digest + merkle_root


def read_report_data(report_data: bytes) -> BoundReportData:
    """Split 64 report_data bytes into the /info digest and the nonce (None when all zero)."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise ReportDataError(
            f"report_data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}"
        )
    nonce = report_data[HASH_SIZE:]
    return BoundReportData(info_digest=report_data[:HASH_SIZE], nonce=nonce if any(nonce) else None)
