"""DCAP collateral from a PCCS over HTTP (Intel's v4 API): the four pieces a TDX quote needs,
each checked to be what it claims before dcap-qvl sees it. Loaded only when a PCCS is asked."""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from oauth3.attestation import parse_strict_json

from .collateral import CollateralError
from .http_client import Answer, HttpFailure, get_capped

if TYPE_CHECKING:
    import aiohttp

PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)
TCB_INFO_CHAIN_HEADERS = ("SGX-TCB-Info-Issuer-Chain", "TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
CERTIFICATION_PATHS = ("/sgx/certification/v4", "/tdx/certification/v4")
MAX_BODY = 1 << 20


def _base_url(pccs_url: str) -> str:
    base = pccs_url.rstrip("/")
    for suffix in CERTIFICATION_PATHS:
        base = base.removesuffix(suffix)
    return base


def _chain_header(answer: Answer, names: tuple[str, ...]) -> str:
    """An issuer-chain header: URL-encoded PEM certificates, checked to be exactly that."""
    for name in names:
        value = answer.headers.get(name)
        if value is not None:
            chain = urllib.parse.unquote(value, errors="strict")
            try:
                if x509.load_pem_x509_certificates(chain.encode()):
                    return chain
            except (ValueError, UnicodeError):
                pass
            raise CollateralError(
                f"PCCS {name} header from {answer.url} is no PEM certificate chain"
            )
    raise CollateralError(f"PCCS response from {answer.url} lacks the {names[0]} header")


async def _get(session: aiohttp.ClientSession, url: str) -> Answer:
    try:
        answer = await get_capped(session, url, MAX_BODY)
    except HttpFailure as exc:
        raise CollateralError(f"cannot fetch collateral from the PCCS: {exc}") from None
    if answer.status != 200:
        raise CollateralError(f"PCCS answered HTTP {answer.status} for {answer.url}")
    return answer


def _crl_der(body: bytes, what: str) -> bytes:
    """A CRL as DER, whether the PCCS sent DER, PEM or hex text (PCCS root CA CRLs are hex);
    CollateralError unless the bytes are one well-formed X.509 CRL in one of those encodings."""
    try:
        if body[:1] == b"\x30":  # DER is binary: its last bytes may well look like whitespace
            der = bytes(body)
        elif body.strip().startswith(b"-----BEGIN"):
            der = x509.load_pem_x509_crl(body.strip()).public_bytes(Encoding.DER)
        else:
            der = bytes.fromhex(body.strip().decode("ascii"))
        if x509.load_der_x509_crl(der).public_bytes(Encoding.DER) != der:
            raise ValueError("not DER")
    except (UnicodeDecodeError, ValueError):
        raise CollateralError(f"{what} from the PCCS is no X.509 CRL in DER, PEM or hex") from None
    return der


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
        signature = parse_strict_json(text)["signature"]
        signed = _raw_member(text, member)
        parse_strict_json(signed)
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

    answer = await _get(
        session, f"{sgx}/pckcrl?{urllib.parse.urlencode({'ca': ca, 'encoding': 'der'})}"
    )
    pck_crl_issuer_chain = _chain_header(answer, PCK_CRL_CHAIN_HEADERS)
    pck_crl = _crl_der(answer.body, "PCK CRL")

    answer = await _get(session, f"{tee_base}/tcb?{urllib.parse.urlencode({'fmspc': fmspc})}")
    tcb_info_issuer_chain = _chain_header(answer, TCB_INFO_CHAIN_HEADERS)
    tcb_info, tcb_info_signature = _signed_document(answer.body, "tcbInfo", str(answer.url))

    answer = await _get(session, f"{tee_base}/qe/identity?update=standard")
    qe_identity_issuer_chain = _chain_header(answer, QE_IDENTITY_CHAIN_HEADERS)
    qe_identity, qe_identity_signature = _signed_document(
        answer.body, "enclaveIdentity", str(answer.url)
    )

    answer = await _get(session, f"{sgx}/rootcacrl")
    root_ca_crl = _crl_der(answer.body, "root CA CRL")

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
