"""DCAP collateral: read it from a QuoteCollateralV3 JSON file or fetch it from a PCCS over HTTP."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import aiohttp
import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .http import BodyTooLarge, read_body

# a fact from dcap-qvl and the reference: Phala's public PCCS, the verifier's default
DEFAULT_PCCS_URL = "https://pccs.phala.network"
PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)
TCB_INFO_CHAIN_HEADERS = ("SGX-TCB-Info-Issuer-Chain", "TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
CERTIFICATION_PATHS = ("/sgx/certification/v4", "/tdx/certification/v4")
MAX_BODY = 1 << 20


class CollateralError(Exception):
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
        doc = json.loads(text)
        spans[name] = (_parse_time(doc["issueDate"]), _parse_time(doc["nextUpdate"]))
    for name, der in (("root_ca_crl", collateral.root_ca_crl), ("pck_crl", collateral.pck_crl)):
        crl = x509.load_der_x509_crl(bytes(der))
        if crl.next_update_utc is None:
            raise CollateralError(f"{name} has no nextUpdate")
        spans[name] = (crl.last_update_utc, crl.next_update_utc)
    window: dict[str, Any] = {
        name: {"from": _stamp(start), "until": _stamp(end)} for name, (start, end) in spans.items()
    }
    window["valid_from"] = _stamp(max(start for start, _ in spans.values()))
    window["valid_until"] = _stamp(min(end for _, end in spans.values()))
    return window


def _base_url(pccs_url: str) -> str:
    base = pccs_url.rstrip("/")
    for suffix in CERTIFICATION_PATHS:
        base = base.removesuffix(suffix)
    return base


def _header(response: aiohttp.ClientResponse, names: tuple[str, ...], url: str) -> str:
    for name in names:
        value = response.headers.get(name)
        if value is not None:
            return urllib.parse.unquote(value)
    raise CollateralError(f"PCCS response from {url} lacks the {names[0]} header")


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, bytes]:
    try:
        async with session.get(url) as response:
            body = await read_body(response, MAX_BODY)
            if response.status != 200:
                raise CollateralError(f"PCCS answered HTTP {response.status} for {url}")
            return response, body
    except BodyTooLarge as exc:
        raise CollateralError(f"PCCS response from {url} {exc}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CollateralError(f"cannot fetch {url}: {type(exc).__name__} {exc}".strip()) from None


def _crl_der(body: bytes, what: str) -> bytes:
    """A CRL as DER, whether the PCCS sent DER, PEM or hex text (PCCS root CA CRLs are hex)."""
    if body[:1] == b"\x30":  # DER is binary: its last bytes may well look like whitespace
        return bytes(body)
    stripped = body.strip()
    if stripped.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(stripped).public_bytes(Encoding.DER)
    try:
        return bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise CollateralError(f"{what} is neither DER, PEM nor hex") from None


def _raw_member(text: str, key: str) -> str:
    """The exact source text of a top-level member's value (signatures cover these bytes)."""
    decoder = json.JSONDecoder()
    index = _skip(text, 0)
    if text[index : index + 1] != "{":
        raise ValueError("not a JSON object")
    index = _skip(text, index + 1)
    while text[index : index + 1] != "}":
        name, index = decoder.raw_decode(text, index)
        index = _skip(text, index)
        if text[index : index + 1] != ":":
            raise ValueError("expected ':'")
        start = _skip(text, index + 1)
        _, end = decoder.raw_decode(text, start)
        if name == key:
            return text[start:end]
        index = _skip(text, end)
        if text[index : index + 1] == ",":
            index = _skip(text, index + 1)
    raise KeyError(key)


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _signed_document(body: bytes, member: str, url: str) -> tuple[str, bytes]:
    try:
        text = body.decode("utf-8")
        signed = _raw_member(text, member)
        signature = json.loads(text)["signature"]
        return signed, bytes.fromhex(signature)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CollateralError(f"PCCS response from {url} is not a signed {member}: {exc}") from None


async def fetch_collateral(
    session: aiohttp.ClientSession, pccs_url: str, raw_quote: bytes
) -> dcap_qvl.QuoteCollateralV3:
    """Fetch the four collateral pieces a TDX quote needs from a PCCS (Intel's v4 API)."""
    try:
        parsed = dcap_qvl.parse_quote(raw_quote)
        fmspc = str(parsed.fmspc()).upper()
        ca = str(parsed.ca())
    except Exception as exc:  # dcap-qvl raises ValueError on a quote it cannot read
        raise CollateralError(f"cannot read FMSPC/CA from the quote: {exc}") from None
    tee = "tdx" if parsed.is_tdx() else "sgx"
    base = _base_url(pccs_url)
    sgx = f"{base}/sgx/certification/v4"
    tee_base = f"{base}/{tee}/certification/v4"

    url = f"{sgx}/pckcrl?{urllib.parse.urlencode({'ca': ca, 'encoding': 'der'})}"
    response, body = await _get(session, url)
    pck_crl_issuer_chain = _header(response, PCK_CRL_CHAIN_HEADERS, url)
    pck_crl = _crl_der(body, "PCK CRL")

    url = f"{tee_base}/tcb?{urllib.parse.urlencode({'fmspc': fmspc})}"
    response, body = await _get(session, url)
    tcb_info_issuer_chain = _header(response, TCB_INFO_CHAIN_HEADERS, url)
    tcb_info, tcb_info_signature = _signed_document(body, "tcbInfo", url)

    url = f"{tee_base}/qe/identity?update=standard"
    response, body = await _get(session, url)
    qe_identity_issuer_chain = _header(response, QE_IDENTITY_CHAIN_HEADERS, url)
    qe_identity, qe_identity_signature = _signed_document(body, "enclaveIdentity", url)

    _, body = await _get(session, f"{sgx}/rootcacrl")
    root_ca_crl = _crl_der(body, "root CA CRL")

    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain,
        root_ca_crl,
        pck_crl,
        tcb_info_issuer_chain,
        tcb_info,
        tcb_info_signature,
        qe_identity_issuer_chain,
        qe_identity,
        qe_identity_signature,
    )
