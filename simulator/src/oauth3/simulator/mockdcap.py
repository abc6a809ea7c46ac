"""A simulated Intel DCAP PKI (root, PCK, TCB signing), its collateral and a PCCS, from a seed."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from oauth3.attestation.tcb import TCB_STATUSES, TcbStatus
from oauth3.simulator.quote import QuoteSigner, raw_ecdsa_signature, sgx_report_body

ROOT_CA_FILE = "root-ca.der"
COLLATERAL_FILE = "collateral.json"

DEFAULT_FMSPC = bytes.fromhex("B0C06F000000")
PCE_ID = bytes(2)
PCK_CPUSVN = bytes.fromhex("03030202040100050000000000000000")
PCK_PCESVN = 11
SGX_TYPE_SCALABLE = 1
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
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_KDF_SALT = b"oauth3 simulated DCAP PKI v1"
_ORGANIZATION = "oauth3 simulator - not Intel"

ISSUER_CHAIN_HEADER_PCK_CRL = "SGX-PCK-CRL-Issuer-Chain"
ISSUER_CHAIN_HEADER_TCB_INFO = "TCB-Info-Issuer-Chain"
ISSUER_CHAIN_HEADER_QE_IDENTITY = "SGX-Enclave-Identity-Issuer-Chain"


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


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    size_bytes = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size_bytes)]) + size_bytes + content


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def _der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    encoded = b"".join(_base128(arc) for arc in [40 * arcs[0] + arcs[1], *arcs[2:]])
    return _der(0x06, encoded)


def _der_uint(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _sgx_item(sub_oid: str, value: bytes) -> bytes:
    return _der(0x30, _der_oid(f"{SGX_EXTENSION_OID}.{sub_oid}") + value)


def sgx_pck_extension(
    *, ppid: bytes, cpusvn: bytes, pcesvn: int, pce_id: bytes, fmspc: bytes, platform_id: bytes
) -> bytes:
    """DER of Intel's SGX extension (OID 1.2.840.113741.1.13.1) that a PCK certificate carries."""
    tcb = b"".join(_sgx_item(f"2.{i + 1}", _der_uint(svn)) for i, svn in enumerate(cpusvn))
    tcb += _sgx_item("2.17", _der_uint(pcesvn)) + _sgx_item("2.18", _der(0x04, cpusvn))
    false = _der(0x01, b"\x00")
    configuration = b"".join(_sgx_item(f"7.{i}", false) for i in (1, 2, 3))
    return _der(
        0x30,
        b"".join(
            [
                _sgx_item("1", _der(0x04, ppid)),
                _sgx_item("2", _der(0x30, tcb)),
                _sgx_item("3", _der(0x04, pce_id)),
                _sgx_item("4", _der(0x04, fmspc)),
                _sgx_item("5", _der(0x0A, bytes([SGX_TYPE_SCALABLE]))),
                _sgx_item("6", _der(0x04, platform_id)),
                _sgx_item("7", _der(0x30, configuration)),
            ]
        ),
    )


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

        root_key, pck_ca_key, pck_key, tcb_key = (
            derive.key(label) for label in ("root-ca", "pck-platform-ca", "pck", "tcb-signing")
        )
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
        extension = sgx_pck_extension(
            ppid=derive.bytes("ppid", 16),
            cpusvn=PCK_CPUSVN,
            pcesvn=PCK_PCESVN,
            pce_id=PCE_ID,
            fmspc=self.fmspc,
            platform_id=derive.bytes("platform-instance-id", 16),
        )
        self.pck_serial = derive.serial("pck", self.now)
        pck = _certificate(
            subject=_name("oauth3 SIMULATED PCK Certificate - not Intel"),
            key=pck_key,
            issuer=pck_ca_name,
            issuer_key=pck_ca_key,
            serial=self.pck_serial,
            extra=x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), extension),
            not_before=self.not_before,
        )
        tcb_signing = _certificate(
            subject=_name("oauth3 SIMULATED TCB Signing - not Intel"),
            key=tcb_key,
            issuer=root_name,
            issuer_key=root_key,
            serial=derive.serial("tcb-signing", self.now),
            not_before=self.not_before,
        )

        self.root_ca_der = root.public_bytes(serialization.Encoding.DER)
        self.root_ca_pem = _pem(root)
        self.pck_crl_issuer_chain = _pem(pck_ca) + self.root_ca_pem
        self.tcb_info_issuer_chain = _pem(tcb_signing) + self.root_ca_pem
        self.qe_identity_issuer_chain = self.tcb_info_issuer_chain
        self.root_ca_crl_der = _crl(
            issuer=root_name,
            issuer_key=root_key,
            this_update=self.not_before,
            next_update=self.not_after,
            revoked_serials=(),
        )
        self.pck_crl_der = _crl(
            issuer=pck_ca_name,
            issuer_key=pck_ca_key,
            this_update=self.not_before,
            next_update=self.not_after,
            revoked_serials=(self.pck_serial,) if self.options.revoked_pck else (),
        )

        qe_mr_signer = derive.bytes("qe-mrsigner", 32)
        self.tcb_info = _compact_json(self._tcb_info_object())
        self.tcb_info_signature = raw_ecdsa_signature(tcb_key, self.tcb_info.encode())
        self.qe_identity = _compact_json(self._qe_identity_object(qe_mr_signer))
        self.qe_identity_signature = raw_ecdsa_signature(tcb_key, self.qe_identity.encode())

        self.signer = QuoteSigner(
            attestation_key=derive.key("attestation"),
            pck_key=pck_key,
            pck_chain_pem=(_pem(pck) + self.pck_crl_issuer_chain).encode(),
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
