"""A fake PCCS (a real aiohttp app) serving the collateral pieces of the repo's vectors, shared
by the PCCS client tests and the hardening tests that make it answer wrongly."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

REPORT = "dstack-head/verifier-fixtures/quote-report.json"
COLLATERAL = "dcap-qvl/sample/tdx_quote_outdated_collateral.json"
INSIDE = "2026-03-20T10:41:14Z"


def collateral_pieces(vectors: Path) -> dict[str, str]:
    """The vectors' collateral file: each piece (hex or JSON text) by its name."""
    loaded: dict[str, str] = json.loads((vectors / COLLATERAL).read_text())
    return loaded


def fake_pccs(
    collateral: dict[str, str],
    *,
    tcb_chain_header: str = "TCB-Info-Issuer-Chain",
    pem_crl: bool = False,
    spaced_bodies: bool = False,
    broken: str | None = None,
) -> tuple[web.Application, list[str]]:
    """An aiohttp PCCS serving one collateral set, recording each request's path and query."""
    seen: list[str] = []
    sep = ", " if spaced_bodies else ","
    colon = ": " if spaced_bodies else ":"

    def chain(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    async def pck_crl(request: web.Request) -> web.Response:
        der = bytes.fromhex(collateral["pck_crl"])
        body = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM) if pem_crl else der
        headers = (
            {}
            if broken == "header"
            else {"SGX-PCK-CRL-Issuer-Chain": chain(collateral["pck_crl_issuer_chain"])}
        )
        return web.Response(body=body, headers=headers)

    async def root_crl(request: web.Request) -> web.Response:
        return web.Response(text=collateral["root_ca_crl"])

    async def tcb(request: web.Request) -> web.Response:
        if broken == "tcb":
            raise web.HTTPNotFound()
        if broken == "unsigned":
            return web.Response(
                text=f'{{"tcbInfo":{collateral["tcb_info"]}}}',
                headers={tcb_chain_header: chain(collateral["tcb_info_issuer_chain"])},
            )
        body = (
            f'{{"tcbInfo"{colon}{collateral["tcb_info"]}{sep}'
            f'"signature"{colon}"{collateral["tcb_info_signature"]}"}}'
        )
        headers = {tcb_chain_header: chain(collateral["tcb_info_issuer_chain"])}
        return web.Response(text=body, content_type="application/json", headers=headers)

    async def qe_identity(request: web.Request) -> web.Response:
        body = (
            f'{{"enclaveIdentity"{colon}{collateral["qe_identity"]}{sep}'
            f'"signature"{colon}"{collateral["qe_identity_signature"]}"}}'
        )
        headers = {
            "SGX-Enclave-Identity-Issuer-Chain": chain(collateral["qe_identity_issuer_chain"])
        }
        return web.Response(text=body, content_type="application/json", headers=headers)

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path_qs)
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    app.router.add_get("/sgx/certification/v4/pckcrl", pck_crl)
    app.router.add_get("/sgx/certification/v4/rootcacrl", root_crl)
    app.router.add_get("/tdx/certification/v4/tcb", tcb)
    app.router.add_get("/tdx/certification/v4/qe/identity", qe_identity)
    return app, seen
