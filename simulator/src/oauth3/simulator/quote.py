"""Build Intel TDX v4 quotes from scratch, signed by a simulated quoting enclave; pure functions."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from oauth3.attestation.quote import (
    ATTESTATION_KEY_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT,
    HEADER_SIZE,
    INTEL_QE_VENDOR_ID,
    QE_REPORT_SIZE,
    TD_REPORT10_SIZE,
    TEE_TYPE_TDX,
)

QUOTE_VERSION = 4
SIGNED_SIZE = HEADER_SIZE + TD_REPORT10_SIZE
USER_DATA_SIZE = 20
MEASUREMENT_SIZE = 48
REPORT_DATA_SIZE = 64
RTMR_COUNT = 4
SGX_REPORT_DATA_OFFSET = 320
QE_AUTH_DATA_SIZE = 32

SEPT_VE_DISABLE = 1 << 28
DEFAULT_TD_ATTRIBUTES = SEPT_VE_DISABLE.to_bytes(8, "little")
# module ISVSVN 6, module major version 1, late microcode SVN 3: what current hardware reports
DEFAULT_TEE_TCB_SVN = bytes.fromhex("06010300000000000000000000000000")
DEFAULT_XFAM = bytes.fromhex("e702060000000000")


def _check_length(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def td_report_body(
    *,
    mr_td: bytes,
    rtmrs: Sequence[bytes],
    mr_config_id: bytes,
    report_data: bytes,
    td_attributes: bytes = DEFAULT_TD_ATTRIBUTES,
    tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN,
    mr_seam: bytes = bytes(MEASUREMENT_SIZE),
    mr_signer_seam: bytes = bytes(MEASUREMENT_SIZE),
    seam_attributes: bytes = bytes(8),
    xfam: bytes = DEFAULT_XFAM,
    mr_owner: bytes = bytes(MEASUREMENT_SIZE),
    mr_owner_config: bytes = bytes(MEASUREMENT_SIZE),
) -> bytes:
    """Lay out a 584-byte TD report 1.0 body; raises ValueError on any field of the wrong size."""
    if len(rtmrs) != RTMR_COUNT:
        raise ValueError(f"rtmrs must hold {RTMR_COUNT} registers, got {len(rtmrs)}")
    fields: list[tuple[str, bytes, int]] = [
        ("tee_tcb_svn", tee_tcb_svn, 16),
        ("mr_seam", mr_seam, MEASUREMENT_SIZE),
        ("mr_signer_seam", mr_signer_seam, MEASUREMENT_SIZE),
        ("seam_attributes", seam_attributes, 8),
        ("td_attributes", td_attributes, 8),
        ("xfam", xfam, 8),
        ("mr_td", mr_td, MEASUREMENT_SIZE),
        ("mr_config_id", mr_config_id, MEASUREMENT_SIZE),
        ("mr_owner", mr_owner, MEASUREMENT_SIZE),
        ("mr_owner_config", mr_owner_config, MEASUREMENT_SIZE),
        *((f"rtmrs[{i}]", rtmr, MEASUREMENT_SIZE) for i, rtmr in enumerate(rtmrs)),
        ("report_data", report_data, REPORT_DATA_SIZE),
    ]
    for name, value, size in fields:
        _check_length(name, value, size)
    return b"".join(value for _, value, _ in fields)


def sgx_report_body(
    *,
    cpu_svn: bytes,
    attributes: bytes,
    mr_enclave: bytes,
    mr_signer: bytes,
    isv_prod_id: int,
    isv_svn: int,
    misc_select: int = 0,
    report_data: bytes = bytes(REPORT_DATA_SIZE),
) -> bytes:
    """Lay out a 384-byte SGX enclave report (the QE report); raises ValueError on bad sizes."""
    _check_length("cpu_svn", cpu_svn, 16)
    _check_length("attributes", attributes, 16)
    _check_length("mr_enclave", mr_enclave, 32)
    _check_length("mr_signer", mr_signer, 32)
    _check_length("report_data", report_data, REPORT_DATA_SIZE)
    return b"".join(
        [
            cpu_svn,
            struct.pack("<I", misc_select),
            bytes(28),
            attributes,
            mr_enclave,
            bytes(32),
            mr_signer,
            bytes(96),
            struct.pack("<HH", isv_prod_id, isv_svn),
            bytes(60),
            report_data,
        ]
    )


def raw_ecdsa_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """Sign with ECDSA-P256/SHA-256 (RFC 6979 deterministic) and return r||s, 32 bytes each."""
    der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public point x||y (64 bytes, no 0x04 prefix), as quotes carry attestation keys."""
    numbers = key.public_key().public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


@dataclass(frozen=True)
class QuoteSigner:
    """A quoting enclave's keys: a long-lived attestation key, plus the PCK key and chain that
    certify it. The QE certification data is computed once here, so a quote costs one signature."""

    attestation_key: ec.EllipticCurvePrivateKey
    pck_key: ec.EllipticCurvePrivateKey
    pck_chain_pem: bytes
    qe_report_template: bytes
    qe_auth_data: bytes = bytes(QE_AUTH_DATA_SIZE)
    user_data: bytes = bytes(USER_DATA_SIZE)
    certification_data: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_length("qe_report_template", self.qe_report_template, QE_REPORT_SIZE)
        _check_length("qe_auth_data", self.qe_auth_data, QE_AUTH_DATA_SIZE)
        _check_length("user_data", self.user_data, USER_DATA_SIZE)
        for name, key in (("attestation_key", self.attestation_key), ("pck_key", self.pck_key)):
            if not isinstance(key.curve, ec.SECP256R1):
                raise ValueError(f"{name} must be a P-256 key")
        binding = hashlib.sha256(raw_public_key(self.attestation_key) + self.qe_auth_data).digest()
        qe_report = (
            self.qe_report_template[:SGX_REPORT_DATA_OFFSET]
            + binding
            + bytes(REPORT_DATA_SIZE - len(binding))
        )
        inner = (
            struct.pack("<HI", CERT_DATA_PCK_CHAIN, len(self.pck_chain_pem)) + self.pck_chain_pem
        )
        qe_data = b"".join(
            [
                qe_report,
                raw_ecdsa_signature(self.pck_key, qe_report),
                struct.pack("<H", len(self.qe_auth_data)),
                self.qe_auth_data,
                inner,
            ]
        )
        certification = struct.pack("<HI", CERT_DATA_QE_REPORT, len(qe_data)) + qe_data
        object.__setattr__(self, "certification_data", certification)


def quote_header(user_data: bytes = bytes(USER_DATA_SIZE)) -> bytes:
    """The 48-byte v4 TDX quote header (ECDSA-P256 key, Intel QE vendor id, QE/PCE SVN 0)."""
    _check_length("user_data", user_data, USER_DATA_SIZE)
    return (
        struct.pack("<HHIHH", QUOTE_VERSION, ATTESTATION_KEY_ECDSA_P256, TEE_TYPE_TDX, 0, 0)
        + INTEL_QE_VENDOR_ID
        + user_data
    )


def build_quote(body: bytes, signer: QuoteSigner) -> bytes:
    """Assemble a signed TDX v4 quote around a TD report body; raises ValueError if the body is
    not 584 bytes. The attestation key is the signer's (deterministic), and signatures are
    RFC 6979, so equal inputs give equal quotes."""
    _check_length("body", body, TD_REPORT10_SIZE)
    signed = quote_header(signer.user_data) + body
    signature_data = (
        raw_ecdsa_signature(signer.attestation_key, signed)
        + raw_public_key(signer.attestation_key)
        + signer.certification_data
    )
    return signed + struct.pack("<I", len(signature_data)) + signature_data
