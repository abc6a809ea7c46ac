"""A PCCS on 127.0.0.1 serving a MockDcap's collateral at Intel's v4 paths, with the issuer-chain
headers Intel's PCCS sends."""

from __future__ import annotations

import urllib.parse

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .mockdcap import MockDcap

ISSUER_CHAIN_HEADER_PCK_CRL = "SGX-PCK-CRL-Issuer-Chain"
ISSUER_CHAIN_HEADER_TCB_INFO = "TCB-Info-Issuer-Chain"
ISSUER_CHAIN_HEADER_QE_IDENTITY = "SGX-Enclave-Identity-Issuer-Chain"

MOCK_DCAP = web.AppKey("mock_dcap", MockDcap)


def _chain_header(name: str, pem_chain: str) -> dict[str, str]:
    return {name: urllib.parse.quote(pem_chain, safe="")}


async def _pck_crl(request: web.Request) -> web.Response:
    dcap = request.app[MOCK_DCAP]
    ca = request.query.get("ca")
    encoding = request.query.get("encoding", "pem")
    if ca not in ("platform", "processor") or encoding not in ("pem", "der"):
        raise web.HTTPBadRequest(text="ca must be platform|processor, encoding pem|der")
    # one PCK CA issues every simulated PCK certificate; clients that cannot tell which CA a
    # mock leaf names (they default to `processor`) get the CRL that really covers it
    headers = _chain_header(ISSUER_CHAIN_HEADER_PCK_CRL, dcap.pck_crl_issuer_chain)
    if encoding == "der":
        return web.Response(
            body=dcap.pck_crl_der, content_type="application/pkix-crl", headers=headers
        )
    crl = x509.load_der_x509_crl(dcap.pck_crl_der).public_bytes(serialization.Encoding.PEM)
    return web.Response(body=crl, content_type="application/x-pem-file", headers=headers)


async def _root_ca_crl(request: web.Request) -> web.Response:
    return web.Response(text=request.app[MOCK_DCAP].root_ca_crl_der.hex())


async def _tcb_info(request: web.Request) -> web.Response:
    dcap = request.app[MOCK_DCAP]
    fmspc = request.query.get("fmspc", "")
    try:
        requested = bytes.fromhex(fmspc)
    except ValueError:
        requested = b""
    if len(requested) != len(dcap.fmspc):
        raise web.HTTPBadRequest(text="fmspc must be 12 hex digits")
    if requested != dcap.fmspc:
        raise web.HTTPNotFound(text="unknown fmspc")
    return web.Response(
        text=dcap.pccs_tcb_info_body(),
        content_type="application/json",
        headers=_chain_header(ISSUER_CHAIN_HEADER_TCB_INFO, dcap.tcb_info_issuer_chain),
    )


async def _qe_identity(request: web.Request) -> web.Response:
    dcap = request.app[MOCK_DCAP]
    return web.Response(
        text=dcap.pccs_qe_identity_body(),
        content_type="application/json",
        headers=_chain_header(ISSUER_CHAIN_HEADER_QE_IDENTITY, dcap.qe_identity_issuer_chain),
    )


def create_pccs_app(dcap: MockDcap) -> web.Application:
    """A PCCS serving this mock's collateral at Intel's v4 paths (bind it to 127.0.0.1 only)."""
    app = web.Application()
    app[MOCK_DCAP] = dcap
    app.router.add_get("/sgx/certification/v4/pckcrl", _pck_crl)
    app.router.add_get("/sgx/certification/v4/rootcacrl", _root_ca_crl)
    app.router.add_get("/tdx/certification/v4/tcb", _tcb_info)
    app.router.add_get("/tdx/certification/v4/qe/identity", _qe_identity)
    return app
