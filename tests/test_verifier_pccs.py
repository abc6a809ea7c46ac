"""Collateral fetched from a fake PCCS on 127.0.0.1 serving the vectors' collateral pieces."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from oauth3.simulator.mockdcap import MockDcap
from oauth3.verifier.cli import run
from oauth3.verifier.collateral import CollateralError
from oauth3.verifier.pccs import _crl_der, fetch_collateral
from tests.pccs_fake import COLLATERAL, INSIDE, REPORT, collateral_pieces, fake_pccs
from tests.verifycli import step

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def _quote(vectors: Path) -> bytes:
    return bytes.fromhex(json.loads((vectors / REPORT).read_text())["quote"])


async def _verify(args: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = await asyncio.to_thread(run, [*args, "--json"], out)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


@pytest.mark.parametrize(
    ("tcb_chain_header", "pem_crl", "spaced_bodies"),
    [
        ("TCB-Info-Issuer-Chain", False, False),
        ("SGX-TCB-Info-Issuer-Chain", True, True),
    ],
)
async def test_fetched_collateral_equals_the_file(
    vectors: Path,
    aiohttp_server: ServerFactory,
    tcb_chain_header: str,
    pem_crl: bool,
    spaced_bodies: bool,
) -> None:
    expected = collateral_pieces(vectors)
    app, seen = fake_pccs(
        expected, tcb_chain_header=tcb_chain_header, pem_crl=pem_crl, spaced_bodies=spaced_bodies
    )
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        fetched = await fetch_collateral(session, str(server.make_url("/")), _quote(vectors))
    assert json.loads(fetched.to_json()) == expected
    assert sorted(seen) == sorted(
        [
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
            "/tdx/certification/v4/tcb?fmspc=90C06F000000",
            "/tdx/certification/v4/qe/identity?update=standard",
            "/sgx/certification/v4/rootcacrl",
        ]
    )


async def test_pccs_verdict_matches_file_verdict(
    vectors: Path, aiohttp_server: ServerFactory
) -> None:
    app, seen = fake_pccs(collateral_pieces(vectors))
    server = await aiohttp_server(app)
    common = ["--dstack-quote", str(vectors / REPORT), "--at", INSIDE]
    pccs_url = str(server.make_url("/sgx/certification/v4/"))
    by_pccs = await _verify([*common, "--pccs", pccs_url])
    by_file = await _verify([*common, "--collateral", str(vectors / COLLATERAL)])
    assert by_pccs == by_file
    assert step(by_pccs[1], "hardware")["ok"] is True
    assert (
        by_pccs[1]["collateral"]["tcb_info_sha256"]
        == hashlib.sha256(collateral_pieces(vectors)["tcb_info"].encode()).hexdigest()
    )
    assert len(seen) == 4


@pytest.mark.parametrize(("broken", "message"), [("tcb", "HTTP 404"), ("header", "lacks")])
async def test_pccs_errors_are_one_line_exit_2(
    vectors: Path,
    aiohttp_server: ServerFactory,
    capsys: pytest.CaptureFixture[str],
    broken: str,
    message: str,
) -> None:
    app, _ = fake_pccs(collateral_pieces(vectors), broken=broken)
    server = await aiohttp_server(app)
    args = ["--dstack-quote", str(vectors / REPORT), "--pccs", str(server.make_url("/"))]
    code, doc = await _verify(args)
    assert (code, doc["verdict"]) == (2, "ERROR")
    assert message in doc["error"]
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


async def test_unreachable_pccs_is_exit_2(
    vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    code, _ = await _verify(["--dstack-quote", str(vectors / REPORT), "--pccs", url])
    assert code == 2
    assert "cannot fetch" in capsys.readouterr().err


async def test_fetch_rejects_unsigned_tcb_body(
    vectors: Path, aiohttp_server: ServerFactory
) -> None:
    app, _ = fake_pccs(collateral_pieces(vectors), broken="unsigned")
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(CollateralError, match="not a signed tcbInfo"):
            await fetch_collateral(session, str(server.make_url("/")), _quote(vectors))


def test_a_der_crl_that_ends_in_a_whitespace_byte_is_kept_whole() -> None:
    """About one mock CRL in a hundred ends in 0x09-0x0d or 0x20 (its signature's last byte);
    a PCCS answering DER must get those bytes through untouched."""
    moments = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(2000))
    crls = (MockDcap("whitespace", moment).pck_crl_der for moment in moments)
    der = next(crl for crl in crls if crl[-1:].isspace())
    assert _crl_der(der, "PCK CRL") == der
    assert _crl_der(der.hex().encode() + b"\n", "PCK CRL") == der
