"""DCAP collateral: read a QuoteCollateralV3 JSON file, and the window its pieces are valid in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dcap_qvl
from cryptography import x509

from oauth3.attestation import AttestationError, parse_strict_json

from .errors import VerifierError


class CollateralError(VerifierError):
    """Collateral could not be read or fetched (an I/O or network error, exit code 2)."""


def load_collateral(data: bytes | str) -> dcap_qvl.QuoteCollateralV3:
    """Parse QuoteCollateralV3 JSON (byte fields hex, tcb_info/qe_identity as Intel's strings)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except Exception as exc:  # dcap-qvl raises ValueError or its own error types
        raise CollateralError(f"not QuoteCollateralV3 JSON: {' '.join(str(exc).split())}") from None


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def collateral_window(collateral: dcap_qvl.QuoteCollateralV3) -> dict[str, Any]:
    """Issue/next-update dates of TCB info, QE identity and both CRLs, and the window they share."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for name, text in (("tcb_info", collateral.tcb_info), ("qe_identity", collateral.qe_identity)):
        spans[name] = _document_span(name, text)
    for name, der in (("root_ca_crl", collateral.root_ca_crl), ("pck_crl", collateral.pck_crl)):
        try:
            crl = x509.load_der_x509_crl(bytes(der))
        except ValueError:
            raise CollateralError(f"{name} is not a DER CRL") from None
        if crl.next_update_utc is None:
            raise CollateralError(f"{name} has no nextUpdate")
        spans[name] = (crl.last_update_utc, crl.next_update_utc)
    window: dict[str, Any] = {
        name: {"from": _stamp(start), "until": _stamp(end)} for name, (start, end) in spans.items()
    }
    window["valid_from"] = _stamp(max(start for start, _ in spans.values()))
    window["valid_until"] = _stamp(min(end for _, end in spans.values()))
    return window


def _document_span(name: str, text: str) -> tuple[datetime, datetime]:
    try:
        doc = parse_strict_json(text)
        span = (_parse_time(doc["issueDate"]), _parse_time(doc["nextUpdate"]))
    except (AttestationError, KeyError, TypeError, ValueError, AttributeError):
        raise CollateralError(f"{name} has no readable issueDate and nextUpdate") from None
    if span[0].tzinfo is None or span[1].tzinfo is None:
        raise CollateralError(f"{name} dates carry no timezone")
    return span


def quote_is_readable(raw_quote: bytes) -> bool:
    """Whether dcap-qvl can read the FMSPC and CA a PCCS request needs from this quote."""
    try:
        parsed = dcap_qvl.parse_quote(raw_quote)
        parsed.fmspc()
        parsed.ca()
    except Exception:  # dcap-qvl raises ValueError or its own types on a quote it cannot read
        return False
    return True
