"""The simulated DCAP PKI and quotes, checked by the real verifier (dcap-qvl) and over real HTTP."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import dcap_qvl
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from oauth3.attestation.quote import parse_quote
from oauth3.simulator.mockdcap import (
    COLLATERAL_FILE,
    PCK_CPUSVN,
    PCK_PCESVN,
    ROOT_CA_FILE,
    MockDcap,
    MockDcapOptions,
)
from oauth3.simulator.pccs import create_pccs_app
from oauth3.simulator.quote import (
    DEFAULT_TD_ATTRIBUTES,
    HEADER_SIZE,
    INTEL_QE_VENDOR_ID,
    SIGNED_SIZE,
    build_quote,
    raw_public_key,
    td_report_body,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SEED = b"oauth3 test seed"
REPORT_DATA = bytes(range(64))
MR_TD = bytes([0xA1]) * 48
MR_CONFIG_ID = bytes([0x01]) + bytes([0xC0]) * 32 + bytes(15)
RTMRS = [bytes([0x10 + i]) * 48 for i in range(4)]
REPORT_DATA_OFFSET = HEADER_SIZE + 520


def secs(moment: datetime) -> int:
    return int(moment.timestamp())


def body(**overrides: bytes) -> bytes:
    fields: dict[str, bytes] = {"report_data": REPORT_DATA, "mr_td": MR_TD}
    fields.update(overrides)
    return td_report_body(rtmrs=RTMRS, mr_config_id=MR_CONFIG_ID, **fields)


def collateral_of(dcap: MockDcap) -> dcap_qvl.QuoteCollateralV3:
    return dcap_qvl.QuoteCollateralV3.from_json(dcap.collateral_json())


def verify(quote: bytes, dcap: MockDcap, at: datetime = NOW) -> dcap_qvl.VerifiedReport:
    return dcap_qvl.verify_with_root_ca(quote, collateral_of(dcap), dcap.root_ca_der, secs(at))


@pytest.fixture(scope="module")
def dcap() -> MockDcap:
    return MockDcap(SEED, NOW)


@pytest.fixture(scope="module")
def quote(dcap: MockDcap) -> bytes:
    return build_quote(body(), dcap.signer)


def test_quote_verifies_up_to_date_and_reads_back(dcap: MockDcap, quote: bytes) -> None:
    report = verify(quote, dcap)
    assert report.status == "UpToDate"
    assert report.advisory_ids == []
    assert json.loads(report.to_json())["report"]["TD10"]["report_data"] == REPORT_DATA.hex()

    parsed = dcap_qvl.parse_quote(quote)
    assert parsed.header.version == 4
    assert parsed.header.tee_type == 0x81
    assert parsed.header.attestation_key_type == 2
    assert parsed.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert parsed.report.report_data == REPORT_DATA
    assert parsed.report.mr_td == MR_TD
    assert parsed.report.mr_config_id == MR_CONFIG_ID
    rtmrs = [parsed.report.rt_mr0, parsed.report.rt_mr1, parsed.report.rt_mr2, parsed.report.rt_mr3]
    assert rtmrs == RTMRS
    assert parsed.report.td_attributes == DEFAULT_TD_ATTRIBUTES
    assert parsed.fmspc() == dcap.fmspc.hex().upper()
    assert parsed.ca() == "platform"
    extension = parsed.pck_extension()
    assert (extension.cpu_svn, extension.pce_svn) == (PCK_CPUSVN, PCK_PCESVN)
    assert (extension.fmspc, extension.sgx_type) == (dcap.fmspc, 1)
    assert report.ppid == extension.ppid


def test_our_own_parser_reads_the_real_signature_layout(dcap: MockDcap, quote: bytes) -> None:
    parsed = parse_quote(quote)
    assert (parsed.signed_length, parsed.end_offset) == (SIGNED_SIZE, len(quote))
    assert parsed.report.rtmr == tuple(RTMRS)
    assert parsed.report_data_offset == REPORT_DATA_OFFSET
    signature = parsed.signature_data
    assert signature.attestation_key == raw_public_key(dcap.signer.attestation_key)
    assert len(signature.qe_auth_data) == 32
    binding = hashlib.sha256(signature.attestation_key + signature.qe_auth_data).digest()
    assert signature.qe_report.report_data == binding + bytes(32)
    assert signature.certification_data_type == 5
    chain = [x509.load_pem_x509_certificate(pem) for pem in signature.pck_chain_pem()]
    assert len(chain) == 3
    assert chain[-1].public_bytes(serialization.Encoding.DER) == dcap.root_ca_der


def test_every_certificate_says_it_is_simulated(dcap: MockDcap) -> None:
    pems = dcap.signer.pck_chain_pem + dcap.tcb_info_issuer_chain.encode()
    for cert in x509.load_pem_x509_certificates(pems):
        (common_name,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert "SIMULATED" in str(common_name.value)
        assert "not Intel" in str(common_name.value)


@pytest.mark.parametrize("offset", [REPORT_DATA_OFFSET, REPORT_DATA_OFFSET + 63])
def test_flipped_report_data_byte_fails(dcap: MockDcap, quote: bytes, offset: int) -> None:
    tampered = bytearray(quote)
    tampered[offset] ^= 0x01
    with pytest.raises(ValueError, match="ISV enclave report signature is invalid"):
        verify(bytes(tampered), dcap)


def test_intel_root_and_other_mock_roots_reject_it(dcap: MockDcap, quote: bytes) -> None:
    with pytest.raises(ValueError, match="Verification failed"):
        dcap_qvl.verify(quote, collateral_of(dcap), secs(NOW))
    other = MockDcap(b"another seed", NOW)
    with pytest.raises(ValueError, match="Verification failed"):
        dcap_qvl.verify_with_root_ca(quote, collateral_of(dcap), other.root_ca_der, secs(NOW))


def test_debug_td_is_refused(dcap: MockDcap) -> None:
    debug = (int.from_bytes(DEFAULT_TD_ATTRIBUTES, "little") | 1).to_bytes(8, "little")
    with pytest.raises(ValueError, match="Debug mode is enabled"):
        verify(build_quote(body(td_attributes=debug), dcap.signer), dcap)


@pytest.mark.parametrize(
    ("status", "advisories"),
    [
        ("OutOfDate", ()),
        ("OutOfDate", ("INTEL-SA-00837",)),
        ("SWHardeningNeeded", ("INTEL-SA-00615",)),
    ],
)
def test_tcb_status_of_the_matched_level_is_reported(
    status: str, advisories: tuple[str, ...]
) -> None:
    options = MockDcapOptions(tcb_status=status, advisory_ids=advisories)  # type: ignore[arg-type]
    dcap = MockDcap(SEED, NOW, options)
    report = verify(build_quote(body(), dcap.signer), dcap)
    assert report.status == status
    assert report.advisory_ids == list(advisories)


@pytest.mark.parametrize("status", ["UpToDate", "OutOfDate"])
def test_revoked_pck_fails_whatever_the_tcb(status: str) -> None:
    options = MockDcapOptions(tcb_status=status, revoked_pck=True)  # type: ignore[arg-type]
    dcap = MockDcap(SEED, NOW, options)
    crl = x509.load_der_x509_crl(dcap.pck_crl_der)
    assert crl.get_revoked_certificate_by_serial_number(dcap.pck_serial) is not None
    with pytest.raises(ValueError, match="CertRevoked"):
        verify(build_quote(body(), dcap.signer), dcap)


def test_collateral_window_is_enforced(dcap: MockDcap, quote: bytes) -> None:
    assert verify(quote, dcap, at=dcap.not_before).status == "UpToDate"
    assert verify(quote, dcap, at=dcap.not_after - timedelta(seconds=1)).status == "UpToDate"
    for outside in (dcap.not_before - timedelta(seconds=1), dcap.not_after):
        with pytest.raises(ValueError, match="Verification failed"):
            verify(quote, dcap, at=outside)
    short = MockDcap(SEED, NOW, MockDcapOptions(validity=timedelta(hours=1)))
    with pytest.raises(ValueError, match=r"(?i)expired"):
        verify(build_quote(body(), short.signer), short, at=NOW + timedelta(hours=2))


def test_same_seed_and_time_give_the_same_bytes(dcap: MockDcap, quote: bytes) -> None:
    again = MockDcap(SEED.decode(), NOW)
    assert again.root_ca_der == dcap.root_ca_der
    assert again.collateral_json() == dcap.collateral_json()
    assert again.signer.pck_chain_pem == dcap.signer.pck_chain_pem
    assert build_quote(body(), again.signer) == quote

    other_seed = MockDcap(b"another seed", NOW)
    assert other_seed.root_ca_der != dcap.root_ca_der
    assert other_seed.collateral_json() != dcap.collateral_json()
    later = MockDcap(SEED, NOW + timedelta(seconds=1))
    assert later.collateral_json() != dcap.collateral_json()


def test_write_files_is_atomic_and_complete(dcap: MockDcap, tmp_path: Path) -> None:
    target = tmp_path / "dcap"
    dcap.write_files(target)
    dcap.write_files(target)
    assert sorted(path.name for path in target.iterdir()) == [COLLATERAL_FILE, ROOT_CA_FILE]
    assert (target / ROOT_CA_FILE).read_bytes() == dcap.root_ca_der
    assert json.loads((target / COLLATERAL_FILE).read_text()) == dcap.collateral()


def test_collateral_is_exactly_the_quote_collateral_v3_shape(dcap: MockDcap) -> None:
    assert json.loads(collateral_of(dcap).to_json()) == dcap.collateral()


@pytest.mark.parametrize(
    "overrides",
    [
        {"report_data": bytes(63)},
        {"mr_td": bytes(47)},
        {"td_attributes": bytes(4)},
        {"tee_tcb_svn": bytes(17)},
    ],
)
def test_td_report_body_rejects_wrong_sizes(overrides: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="must be"):
        body(**overrides)


def test_bad_inputs_are_refused(dcap: MockDcap) -> None:
    assert len(body()) == 584
    with pytest.raises(ValueError, match="rtmrs"):
        td_report_body(
            mr_td=MR_TD, rtmrs=RTMRS[:3], mr_config_id=MR_CONFIG_ID, report_data=REPORT_DATA
        )
    with pytest.raises(ValueError, match="body"):
        build_quote(body()[:-1], dcap.signer)
    with pytest.raises(ValueError, match="tcb_status"):
        MockDcapOptions(tcb_status="OK")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        MockDcap(SEED, NOW.replace(tzinfo=None))


@pytest.fixture
async def pccs_url(dcap: MockDcap) -> AsyncIterator[str]:
    runner = web.AppRunner(create_pccs_app(dcap))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_pccs_serves_collateral_that_verifies(
    dcap: MockDcap, quote: bytes, pccs_url: str
) -> None:
    fmspc = dcap_qvl.parse_quote(quote).fmspc()
    async with aiohttp.ClientSession(pccs_url) as http:
        async with http.get("/sgx/certification/v4/pckcrl?ca=platform&encoding=der") as response:
            assert response.status == 200
            pck_crl = await response.read()
            pck_crl_chain = urllib.parse.unquote(response.headers["SGX-PCK-CRL-Issuer-Chain"])
        async with http.get("/sgx/certification/v4/rootcacrl") as response:
            assert response.status == 200
            root_ca_crl = bytes.fromhex(await response.text())
        async with http.get(f"/tdx/certification/v4/tcb?fmspc={fmspc}&update=standard") as response:
            assert response.status == 200
            tcb_chain = urllib.parse.unquote(response.headers["TCB-Info-Issuer-Chain"])
            tcb = json.loads(await response.read())
        async with http.get("/tdx/certification/v4/qe/identity?update=standard") as response:
            assert response.status == 200
            qe_chain = urllib.parse.unquote(response.headers["SGX-Enclave-Identity-Issuer-Chain"])
            qe = json.loads(await response.read())

        for path, status in [
            ("/tdx/certification/v4/tcb?fmspc=00906ED50000", 404),
            ("/tdx/certification/v4/tcb?fmspc=zz", 400),
            ("/sgx/certification/v4/pckcrl", 400),
        ]:
            async with http.get(path) as response:
                assert response.status == status, path
        # clients that cannot name a mock leaf's CA ask for the processor CA's CRL (the JS
        # dcap-qvl does): they get the CRL that covers the simulated PCK certificate
        async with http.get("/sgx/certification/v4/pckcrl?ca=processor&encoding=der") as response:
            assert response.status == 200
            assert await response.read() == pck_crl
            assert urllib.parse.unquote(response.headers["SGX-PCK-CRL-Issuer-Chain"]) == (
                pck_crl_chain
            )

    tcb_info = json.dumps(tcb["tcbInfo"], separators=(",", ":"))
    qe_identity = json.dumps(qe["enclaveIdentity"], separators=(",", ":"))
    assert (pck_crl, root_ca_crl) == (dcap.pck_crl_der, dcap.root_ca_crl_der)
    assert (tcb_info, qe_identity) == (dcap.tcb_info, dcap.qe_identity)
    fetched = dcap_qvl.QuoteCollateralV3(
        pck_crl_chain,
        root_ca_crl,
        pck_crl,
        tcb_chain,
        tcb_info,
        bytes.fromhex(tcb["signature"]),
        qe_chain,
        qe_identity,
        bytes.fromhex(qe["signature"]),
    )
    report = dcap_qvl.verify_with_root_ca(quote, fetched, dcap.root_ca_der, secs(NOW))
    assert report.status == "UpToDate"
