"""A simulated Intel DCAP PKI (root, PCK, TCB signing) and its collateral, from a seed (the PCCS
that serves it is pccs.py)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from oauth3.attestation.tcb import TCB_STATUSES, TcbStatus
from oauth3.simulator.quote import QuoteSigner, raw_ecdsa_signature, sgx_report_body

from .sgx_extension import SGX_EXTENSION_OID, sgx_pck_extension

ROOT_CA_FILE = "root-ca.der"
COLLATERAL_FILE = "collateral.json"

DEFAULT_FMSPC = bytes.fromhex("B0C06F000000")
PCE_ID = bytes(2)
PCK_CPUSVN = bytes.fromhex("03030202040100050000000000000000")
PCK_PCESVN = 11
TCB_EVALUATION_DATA_NUMBER = 17
# TCB levels as Intel publishes them for this platform family: SGX components and the TDX
# components (bytes 0-1 are skipped by verifiers once the module identity covers them)
LEVEL_SGX_SVNS = (2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
LEVEL_TDX_SVNS = (5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
OLDER_LEVEL_PCESVN = 5
OLDER_LEVEL_ADVISORIES = ("INTEL-SA-00837",)
TDX_MODULE_VERSIONS = (1, 3)
TDX_MODULE_MIN_ISVSVN = 4
QE_ISV_PROD_ID = 2
QE_ISV_SVN = 4
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_ATTRIBUTES_MASK = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")
QE_AUTH_DATA = bytes(range(32))

BACKDATE = timedelta(days=1)
CERTIFICATE_LIFETIME = timedelta(days=3650)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_KDF_SALT = b"oauth3 simulated DCAP PKI v1"
_ORGANIZATION = "oauth3 simulator - not Intel"


@dataclass(frozen=True)
class MockDcapOptions:
    """What the simulated platform looks like to a TCB policy: status of the matched level,
    its advisories, a revoked PCK certificate, how long the collateral stays valid."""

    tcb_status: TcbStatus = "UpToDate"
    advisory_ids: tuple[str, ...] = ()
    revoked_pck: bool = False
    validity: timedelta = timedelta(days=30)
    fmspc: bytes = DEFAULT_FMSPC
    qe_identity_evaluation: int = TCB_EVALUATION_DATA_NUMBER  # a QE identity from another round

    def __post_init__(self) -> None:
        if self.tcb_status not in TCB_STATUSES:
            raise ValueError(f"tcb_status must be one of {TCB_STATUSES}, got {self.tcb_status!r}")
        if self.validity <= timedelta(0):
            raise ValueError("validity must be positive")
        if len(self.fmspc) != 6:
            raise ValueError(f"fmspc must be 6 bytes, got {len(self.fmspc)}")


class _Derivation:
    """Everything secret or unique comes from HKDF-SHA256(seed, info=label)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed

    def bytes(self, label: str, size: int) -> bytes:
        kdf = HKDF(algorithm=hashes.SHA256(), length=size, salt=_KDF_SALT, info=label.encode())
        return kdf.derive(self._seed)

    def key(self, label: str) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(self.bytes(f"key/{label}", 48), "big") % (P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())

    def serial(self, label: str, now: datetime) -> int:
        digest = self.bytes(f"serial/{label}/{int(now.timestamp())}", 16)
        return int.from_bytes(digest, "big") >> 1 | 1


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        ]
    )


def _certificate(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    not_before: datetime,
    path_length: int | None = None,
    is_ca: bool = False,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=not is_ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


def _crl(
    *,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    this_update: datetime,
    next_update: datetime,
    revoked_serials: tuple[int, ...],
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    crl = builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)
    return crl.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _components(svns: tuple[int, ...]) -> list[dict[str, int]]:
    return [{"svn": svn} for svn in svns]


@dataclass(frozen=True, slots=True)
class _Pki:
    """The simulated PKI's certificates and the keys that issued them."""

    root: x509.Certificate
    pck_ca: x509.Certificate
    pck: x509.Certificate
    tcb_signing: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_key: ec.EllipticCurvePrivateKey
    tcb_key: ec.EllipticCurvePrivateKey


class MockDcap:
    """A simulated DCAP PKI and collateral: same (seed, now, options) gives the same bytes.
    Quotes signed by `signer` verify against `root_ca_der` (never Intel's root) at any time t
    with not_before <= t < not_after; raises ValueError for a naive `now`."""

    def __init__(
        self, seed: bytes | str, now: datetime, options: MockDcapOptions | None = None
    ) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.options = options or MockDcapOptions()
        self.now = now.astimezone(UTC).replace(microsecond=0)
        self.not_before = self.now - BACKDATE
        self.not_after = self.now + self.options.validity
        self.fmspc = self.options.fmspc
        derive = _Derivation(seed.encode() if isinstance(seed, str) else seed)
        pki = self._issue_certificates(derive)
        self._publish_chains_and_crls(pki)
        qe_mr_signer = derive.bytes("qe-mrsigner", 32)
        self._sign_collateral(pki.tcb_key, qe_mr_signer)
        self.signer = self._quote_signer(derive, pki, qe_mr_signer)

    def _issue_certificates(self, derive: _Derivation) -> _Pki:
        """The root CA, the PCK platform CA under it, the PCK leaf and the TCB signing cert."""
        keys = [derive.key(label) for label in ("root-ca", "pck-platform-ca", "pck", "tcb-signing")]
        root_key, pck_ca_key, pck_key, tcb_key = keys
        root_name = _name("oauth3 SIMULATED SGX Root CA - not Intel")
        pck_ca_name = _name("oauth3 SIMULATED PCK Platform CA - not Intel")
        root = _certificate(
            subject=root_name,
            key=root_key,
            issuer=root_name,
            issuer_key=root_key,
            serial=derive.serial("root-ca", self.now),
            is_ca=True,
            path_length=1,
            not_before=self.not_before,
        )
        pck_ca = _certificate(
            subject=pck_ca_name,
            key=pck_ca_key,
            issuer=root_name,
            issuer_key=root_key,
            serial=derive.serial("pck-platform-ca", self.now),
            is_ca=True,
            path_length=0,
            not_before=self.not_before,
        )
        self.pck_serial = derive.serial("pck", self.now)
        tcb_signing = _certificate(
            subject=_name("oauth3 SIMULATED TCB Signing - not Intel"),
            key=tcb_key,
            issuer=root_name,
            issuer_key=root_key,
            serial=derive.serial("tcb-signing", self.now),
            not_before=self.not_before,
        )
        pck = self._pck_certificate(derive, pck_key, pck_ca_name, pck_ca_key)
        return _Pki(root, pck_ca, pck, tcb_signing, root_key, pck_ca_key, pck_key, tcb_key)

    def _pck_certificate(
        self,
        derive: _Derivation,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        issuer_key: ec.EllipticCurvePrivateKey,
    ) -> x509.Certificate:
        """The PCK leaf, carrying the SGX extension (FMSPC, CPUSVN, PCESVN) verifiers read."""
        extension = sgx_pck_extension(
            ppid=derive.bytes("ppid", 16),
            cpusvn=PCK_CPUSVN,
            pcesvn=PCK_PCESVN,
            pce_id=PCE_ID,
            fmspc=self.fmspc,
            platform_id=derive.bytes("platform-instance-id", 16),
        )
        return _certificate(
            subject=_name("oauth3 SIMULATED PCK Certificate - not Intel"),
            key=key,
            issuer=issuer,
            issuer_key=issuer_key,
            serial=self.pck_serial,
            extra=x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), extension),
            not_before=self.not_before,
        )

    def _publish_chains_and_crls(self, pki: _Pki) -> None:
        """The root in DER and PEM, each issuer chain as a PCCS serves it, and both CRLs (the
        PCK CRL lists the PCK leaf when the options revoke it)."""
        self.root_ca_der = pki.root.public_bytes(serialization.Encoding.DER)
        self.root_ca_pem = _pem(pki.root)
        self.pck_crl_issuer_chain = _pem(pki.pck_ca) + self.root_ca_pem
        self.tcb_info_issuer_chain = _pem(pki.tcb_signing) + self.root_ca_pem
        self.qe_identity_issuer_chain = self.tcb_info_issuer_chain
        self.root_ca_crl_der = _crl(
            issuer=pki.root.subject,
            issuer_key=pki.root_key,
            this_update=self.not_before,
            next_update=self.not_after,
            revoked_serials=(),
        )
        self.pck_crl_der = _crl(
            issuer=pki.pck_ca.subject,
            issuer_key=pki.pck_ca_key,
            this_update=self.not_before,
            next_update=self.not_after,
            revoked_serials=(self.pck_serial,) if self.options.revoked_pck else (),
        )

    def _sign_collateral(self, tcb_key: ec.EllipticCurvePrivateKey, qe_mr_signer: bytes) -> None:
        """The TCB info and QE identity documents, each signed by the TCB signing key."""
        self.tcb_info = _compact_json(self._tcb_info_object())
        self.tcb_info_signature = raw_ecdsa_signature(tcb_key, self.tcb_info.encode())
        self.qe_identity = _compact_json(self._qe_identity_object(qe_mr_signer))
        self.qe_identity_signature = raw_ecdsa_signature(tcb_key, self.qe_identity.encode())

    def _quote_signer(self, derive: _Derivation, pki: _Pki, qe_mr_signer: bytes) -> QuoteSigner:
        """What signs quotes: the attestation key, certified by a QE report the PCK key signs."""
        return QuoteSigner(
            attestation_key=derive.key("attestation"),
            pck_key=pki.pck_key,
            pck_chain_pem=(_pem(pki.pck) + self.pck_crl_issuer_chain).encode(),
            qe_report_template=sgx_report_body(
                cpu_svn=PCK_CPUSVN,
                attributes=QE_ATTRIBUTES,
                mr_enclave=derive.bytes("qe-mrenclave", 32),
                mr_signer=qe_mr_signer,
                isv_prod_id=QE_ISV_PROD_ID,
                isv_svn=QE_ISV_SVN,
            ),
            qe_auth_data=QE_AUTH_DATA,
            user_data=derive.bytes("qe-id", 16) + bytes(4),
        )

    def _tcb_info_object(self) -> dict[str, Any]:
        module = {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8}
        module_levels = [
            {
                "tcb": {"isvsvn": TDX_MODULE_MIN_ISVSVN},
                "tcbDate": _timestamp(_midnight(self.now - timedelta(days=90))),
                "tcbStatus": "UpToDate",
            },
            {
                "tcb": {"isvsvn": TDX_MODULE_MIN_ISVSVN - 2},
                "tcbDate": _timestamp(_midnight(self.now - timedelta(days=730))),
                "tcbStatus": "OutOfDate",
            },
        ]
        current: dict[str, Any] = {
            "tcb": {
                "sgxtcbcomponents": _components(LEVEL_SGX_SVNS),
                "pcesvn": PCK_PCESVN,
                "tdxtcbcomponents": _components(LEVEL_TDX_SVNS),
            },
            "tcbDate": _timestamp(_midnight(self.now - timedelta(days=90))),
            "tcbStatus": self.options.tcb_status,
        }
        if self.options.advisory_ids:
            current["advisoryIDs"] = list(self.options.advisory_ids)
        older = {
            "tcb": {
                "sgxtcbcomponents": _components(LEVEL_SGX_SVNS),
                "pcesvn": OLDER_LEVEL_PCESVN,
                "tdxtcbcomponents": _components(LEVEL_TDX_SVNS),
            },
            "tcbDate": _timestamp(_midnight(self.now - timedelta(days=730))),
            "tcbStatus": "OutOfDate",
            "advisoryIDs": list(OLDER_LEVEL_ADVISORIES),
        }
        return {
            "id": "TDX",
            "version": 3,
            "issueDate": _timestamp(self.not_before),
            "nextUpdate": _timestamp(self.not_after),
            "fmspc": self.fmspc.hex().upper(),
            "pceId": PCE_ID.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
            "tdxModule": module,
            "tdxModuleIdentities": [
                {"id": f"TDX_{version:02X}", **module, "tcbLevels": module_levels}
                for version in TDX_MODULE_VERSIONS
            ],
            "tcbLevels": [current, older],
        }

    def _qe_identity_object(self, mr_signer: bytes) -> dict[str, Any]:
        return {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _timestamp(self.not_before),
            "nextUpdate": _timestamp(self.not_after),
            "tcbEvaluationDataNumber": self.options.qe_identity_evaluation,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": QE_ATTRIBUTES.hex().upper(),
            "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
            "mrsigner": mr_signer.hex().upper(),
            "isvprodid": QE_ISV_PROD_ID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": QE_ISV_SVN},
                    "tcbDate": _timestamp(_midnight(self.now - timedelta(days=90))),
                    "tcbStatus": "UpToDate",
                }
            ],
        }

    def collateral(self) -> dict[str, str]:
        """The collateral in dcap-qvl's QuoteCollateralV3 JSON shape (byte fields as hex)."""
        return {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
            "root_ca_crl": self.root_ca_crl_der.hex(),
            "pck_crl": self.pck_crl_der.hex(),
            "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
            "tcb_info": self.tcb_info,
            "tcb_info_signature": self.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
            "qe_identity": self.qe_identity,
            "qe_identity_signature": self.qe_identity_signature.hex(),
        }

    def collateral_json(self) -> str:
        """`collateral()` as a JSON string, for `QuoteCollateralV3.from_json`."""
        return json.dumps(self.collateral())

    def write_files(self, directory: Path) -> None:
        """Write root-ca.der and collateral.json into directory, each atomically (temp + rename)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in (
            (ROOT_CA_FILE, self.root_ca_der),
            (COLLATERAL_FILE, self.collateral_json().encode()),
        ):
            fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temp, directory / name)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise

    def pccs_tcb_info_body(self) -> str:
        """The PCCS `tcb` response body; the signed tcbInfo bytes are embedded verbatim."""
        return f'{{"tcbInfo":{self.tcb_info},"signature":"{self.tcb_info_signature.hex()}"}}'

    def pccs_qe_identity_body(self) -> str:
        """The PCCS `qe/identity` response body; the signed identity bytes are embedded verbatim."""
        signature = self.qe_identity_signature.hex()
        return f'{{"enclaveIdentity":{self.qe_identity},"signature":"{signature}"}}'
