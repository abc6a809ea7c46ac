"""Parse Intel TDX quotes (v4, and v5 with TD report 1.0 or 1.5 bodies) by structure."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import QuoteFormatError

HEADER_SIZE = 48
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
QE_REPORT_SIZE = 384
TEE_TYPE_TDX = 0x00000081
TEE_TYPE_SGX = 0x00000000
ATTESTATION_KEY_ECDSA_P256 = 2
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
V5_BODY_TD10 = 2
V5_BODY_TD15 = 3
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


class _QuoteReader:
    """Little-endian reader whose every failure is a QuoteFormatError naming the field."""

    def __init__(self, data: bytes, offset: int = 0, end: int | None = None) -> None:
        self.data = data
        self.offset = offset
        self.end = len(data) if end is None else min(end, len(data))

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > self.end:
            remain = max(0, self.end - self.offset)
            raise QuoteFormatError(
                f"{what} needs {size} bytes but only {remain} remain", self.offset
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def sub(self, size: int, what: str) -> _QuoteReader:
        """A reader over the next `size` bytes (offsets stay absolute); self skips past them."""
        start = self.offset
        self.take(size, what)
        return _QuoteReader(self.data, start, start + size)

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """The 48-byte quote header."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class TdReport:
    """A TD report body (1.0; the two 1.5 fields are None for 1.0 bodies)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """True when the TD runs with the DEBUG attribute (its memory is readable by the host)."""
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True, slots=True)
class QeReport:
    """The SGX enclave report of the quoting enclave, as embedded in the certification data."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True, slots=True)
class SignatureData:
    """The quote's signature section: attestation key, signature, QE report and PCK certificates."""

    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data_type: int
    certification_data: bytes

    def pck_chain_pem(self) -> list[bytes]:
        """The PEM certificates of the PCK chain (leaf first), empty if the data is not a chain."""
        if self.certification_data_type != CERT_DATA_PCK_CHAIN:
            return []
        marker = b"-----END CERTIFICATE-----"
        parts = self.certification_data.split(marker)
        return [p.strip(b"\x00\r\n ") + marker + b"\n" for p in parts if b"-----BEGIN" in p]


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed TDX quote; `signed_region` is what the attestation key signs."""

    raw: bytes
    header: QuoteHeader
    body_type: int
    report: TdReport
    body_offset: int
    signed_length: int
    signature_data: SignatureData
    end_offset: int

    @property
    def signed_region(self) -> bytes:
        """Header and body: the bytes covered by the attestation key's signature."""
        return self.raw[: self.signed_length]

    @property
    def report_data_offset(self) -> int:
        """Absolute offset of report_data in the quote (568 for v4, 574 for v5)."""
        return self.body_offset + 520


def _parse_header(reader: _QuoteReader) -> QuoteHeader:
    header = QuoteHeader(
        version=reader.u16("header.version"),
        attestation_key_type=reader.u16("header.attestation_key_type"),
        tee_type=reader.u32("header.tee_type"),
        qe_svn=reader.u16("header.qe_svn"),
        pce_svn=reader.u16("header.pce_svn"),
        qe_vendor_id=reader.take(16, "header.qe_vendor_id"),
        user_data=reader.take(20, "header.user_data"),
    )
    if header.version not in (4, 5):
        raise QuoteFormatError(f"unsupported quote version {header.version} (TDX uses 4 or 5)", 0)
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteFormatError(f"tee_type 0x{header.tee_type:08x} is not TDX (0x00000081)", 4)
    if header.attestation_key_type != ATTESTATION_KEY_ECDSA_P256:
        raise QuoteFormatError(
            f"attestation key type {header.attestation_key_type} is not ECDSA-P256 (2)", 2
        )
    return header


def _parse_td_report(reader: _QuoteReader, td15: bool) -> TdReport:
    fields = {
        "tee_tcb_svn": reader.take(16, "td_report.tee_tcb_svn"),
        "mr_seam": reader.take(48, "td_report.mr_seam"),
        "mr_signer_seam": reader.take(48, "td_report.mr_signer_seam"),
        "seam_attributes": reader.take(8, "td_report.seam_attributes"),
        "td_attributes": reader.take(8, "td_report.td_attributes"),
        "xfam": reader.take(8, "td_report.xfam"),
        "mr_td": reader.take(48, "td_report.mr_td"),
        "mr_config_id": reader.take(48, "td_report.mr_config_id"),
        "mr_owner": reader.take(48, "td_report.mr_owner"),
        "mr_owner_config": reader.take(48, "td_report.mr_owner_config"),
    }
    rtmr = tuple(reader.take(48, f"td_report.rtmr{i}") for i in range(4))
    report_data = reader.take(64, "td_report.report_data")
    tee_tcb_svn2 = reader.take(16, "td_report.tee_tcb_svn2") if td15 else None
    mr_servicetd = reader.take(48, "td_report.mr_servicetd") if td15 else None
    return TdReport(
        **fields,
        rtmr=(rtmr[0], rtmr[1], rtmr[2], rtmr[3]),
        report_data=report_data,
        tee_tcb_svn2=tee_tcb_svn2,
        mr_servicetd=mr_servicetd,
    )


def _parse_qe_report(r: _QuoteReader) -> QeReport:
    raw = r.data[r.offset : r.end]
    cpu_svn = r.take(16, "qe_report.cpu_svn")
    misc_select = r.u32("qe_report.misc_select")
    r.take(28, "qe_report.reserved1")
    attributes = r.take(16, "qe_report.attributes")
    mr_enclave = r.take(32, "qe_report.mr_enclave")
    r.take(32, "qe_report.reserved2")
    mr_signer = r.take(32, "qe_report.mr_signer")
    r.take(96, "qe_report.reserved3")
    isv_prod_id = r.u16("qe_report.isv_prod_id")
    isv_svn = r.u16("qe_report.isv_svn")
    r.take(60, "qe_report.reserved4")
    report_data = r.take(64, "qe_report.report_data")
    return QeReport(
        raw=raw,
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        report_data=report_data,
    )


def _parse_signature_data(reader: _QuoteReader) -> SignatureData:
    length = reader.u32("signature_data.length")
    section = reader.sub(length, "signature_data (declared length)")
    signature = section.take(64, "signature_data.signature")
    attestation_key = section.take(64, "signature_data.attestation_key")
    cert_type_offset = section.offset
    cert_type = section.u16("certification_data.type")
    if cert_type != CERT_DATA_QE_REPORT:
        raise QuoteFormatError(
            f"certification data type {cert_type} is not QE report data (6)", cert_type_offset
        )
    outer = section.sub(section.u32("certification_data.size"), "certification_data")
    qe_report = _parse_qe_report(outer.sub(QE_REPORT_SIZE, "qe_report"))
    qe_report_signature = outer.take(64, "qe_report_signature")
    qe_auth_data = outer.take(outer.u16("qe_auth_data.size"), "qe_auth_data")
    inner_type = outer.u16("pck_certification_data.type")
    inner = outer.take(outer.u32("pck_certification_data.size"), "pck_certification_data")
    return SignatureData(
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        certification_data_type=inner_type,
        certification_data=inner,
    )


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX quote; trailing bytes after the signature data are ignored (real quotes pad)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise QuoteFormatError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    reader = _QuoteReader(raw)
    header = _parse_header(reader)
    td15 = False
    body_type = V5_BODY_TD10
    if header.version == 5:
        body_type = reader.u16("body.type")
        body_size = reader.u32("body.size")
        expected = {V5_BODY_TD10: TD_REPORT10_SIZE, V5_BODY_TD15: TD_REPORT15_SIZE}.get(body_type)
        if expected is None:
            raise QuoteFormatError(f"v5 body type {body_type} is not a TD report (2 or 3)", 48)
        if body_size != expected:
            raise QuoteFormatError(
                f"v5 body size {body_size} does not match body type {body_type} ({expected})", 50
            )
        td15 = body_type == V5_BODY_TD15
    body_offset = reader.offset
    report = _parse_td_report(reader, td15)
    signed_length = reader.offset
    signature_data = _parse_signature_data(reader)
    return Quote(
        raw=raw,
        header=header,
        body_type=body_type,
        report=report,
        body_offset=body_offset,
        signed_length=signed_length,
        signature_data=signature_data,
        end_offset=reader.offset,
    )
