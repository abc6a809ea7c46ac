"""dstack's per-image TDX measurement document: `sha256sum.txt` plus `measurement.tdx.cbor`.

An OS image's identity is `os_image_hash = sha256(sha256sum.txt)` (dstack `dstack-types/src/
lib.rs:1404-1470`); the manifest lists `measurement.tdx.cbor`, whose v3 map (`lib.rs:1875-2060`)
holds what a verifier needs to recompute MRTD and RTMR0-2 without the image files: the two MRTD
candidates, the TD HOB witness and the kernel, command-line and initrd digests. The VMM attaches
both files to `vm_config.tdx_measurement` as base64 (`vmm/src/app.rs:1660-1690`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import cbor
from .errors import CborError, MeasurementError

MEASUREMENT_FILE = "measurement.tdx.cbor"
DOCUMENT_VERSION = 3
OVMF_VARIANTS = ("pre202505",)
SHA384_SIZE = 48


@dataclass(frozen=True, slots=True)
class TdxImageMeasurement:
    """The image-static inputs of MRTD and RTMR0-2, as `measurement.tdx.cbor` v3 carries them."""

    cmdline_sha384: bytes
    kernel_authenticode: bytes
    initrd_sha384: bytes
    ovmf_variant: str
    mrtd_single_pass: bytes
    mrtd_two_pass: bytes
    td_hob_witness: bytes

    def to_cbor(self) -> bytes:
        """The exact `measurement.tdx.cbor` bytes dstack writes for these values."""
        return cbor.encode(
            {
                "version": DOCUMENT_VERSION,
                "image": {
                    "cmdline_sha384": self.cmdline_sha384,
                    "kernel_authenticode": self.kernel_authenticode,
                    "initrd_sha384": self.initrd_sha384,
                },
                "tdvf": {
                    "ovmf": self.ovmf_variant,
                    "mrtd": {"single_pass": self.mrtd_single_pass, "two_pass": self.mrtd_two_pass},
                    "td_hob": self.td_hob_witness,
                },
            }
        )


def parse_measurement(data: bytes) -> TdxImageMeasurement:
    """Decode `measurement.tdx.cbor` strictly. MeasurementError naming the field for a wrong
    version, a missing or extra key, a digest that is not 48 bytes or an unknown OVMF variant."""
    try:
        root = cbor.decode(data)
    except CborError as exc:
        raise MeasurementError(f"{MEASUREMENT_FILE} is not strict CBOR: {exc}") from None
    top = _fields(root, "", ("version", "image", "tdvf"))
    if top["version"] != DOCUMENT_VERSION or isinstance(top["version"], bool):
        raise MeasurementError(
            f"{MEASUREMENT_FILE} version {top['version']!r} is not {DOCUMENT_VERSION}"
        )
    image = _fields(
        top["image"], "image.", ("cmdline_sha384", "kernel_authenticode", "initrd_sha384")
    )
    tdvf = _fields(top["tdvf"], "tdvf.", ("ovmf", "mrtd", "td_hob"))
    mrtd = _fields(tdvf["mrtd"], "tdvf.mrtd.", ("single_pass", "two_pass"))
    if tdvf["ovmf"] not in OVMF_VARIANTS:
        raise MeasurementError(f"{MEASUREMENT_FILE} tdvf.ovmf {tdvf['ovmf']!r} is not known")
    if not isinstance(tdvf["td_hob"], bytes):
        raise MeasurementError(f"{MEASUREMENT_FILE} tdvf.td_hob is not a byte string")
    return TdxImageMeasurement(
        cmdline_sha384=_digest(image, "image.", "cmdline_sha384"),
        kernel_authenticode=_digest(image, "image.", "kernel_authenticode"),
        initrd_sha384=_digest(image, "image.", "initrd_sha384"),
        ovmf_variant=str(tdvf["ovmf"]),
        mrtd_single_pass=_digest(mrtd, "tdvf.mrtd.", "single_pass"),
        mrtd_two_pass=_digest(mrtd, "tdvf.mrtd.", "two_pass"),
        td_hob_witness=tdvf["td_hob"],
    )


def _fields(value: object, where: str, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MeasurementError(f"{MEASUREMENT_FILE} {where or 'root'} is not a map")
    if set(value) != set(names):
        raise MeasurementError(
            f"{MEASUREMENT_FILE} {where or 'root '}keys are {sorted(map(str, value))}, "
            f"expected {sorted(names)}"
        )
    return {str(k): v for k, v in value.items()}


def _digest(fields: Mapping[str, object], where: str, name: str) -> bytes:
    value = fields[name]
    if not isinstance(value, bytes) or len(value) != SHA384_SIZE:
        raise MeasurementError(f"{MEASUREMENT_FILE} {where}{name} is not {SHA384_SIZE} bytes")
    return value


def manifest_entry(checksum_file: bytes, filename: str) -> bytes:
    """The SHA-256 `sha256sum.txt` lists for `filename` (dstack `lib.rs:1408-1449`).
    MeasurementError when it is not UTF-8, a line lacks a name, the entry is missing or repeated,
    or its hash is not 32 bytes of hex."""
    try:
        text = checksum_file.decode("utf-8")
    except UnicodeDecodeError:
        raise MeasurementError("sha256sum.txt is not UTF-8") from None
    found: bytes | None = None
    for number, line in enumerate(text.split("\n"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise MeasurementError(f"sha256sum.txt line {number} has no file name")
        if parts[1] != filename:
            continue
        if found is not None:
            raise MeasurementError(f"sha256sum.txt lists {filename} twice")
        try:
            found = bytes.fromhex(parts[0])
        except ValueError:
            raise MeasurementError(f"sha256sum.txt hash of {filename} is not hex") from None
        if len(found) != 32:
            raise MeasurementError(f"sha256sum.txt hash of {filename} is not 32 bytes")
    if found is None:
        raise MeasurementError(f"sha256sum.txt does not list {filename}")
    return found


@dataclass(frozen=True, slots=True)
class MeasurementDocument:
    """`sha256sum.txt` and `measurement.tdx.cbor`, bound together: the manifest lists the cbor's
    SHA-256, and `os_image_hash` is the manifest's SHA-256."""

    checksum_file: bytes
    measurement_bytes: bytes
    measurement: TdxImageMeasurement

    @property
    def os_image_hash(self) -> bytes:
        """sha256(sha256sum.txt): the image identity this document belongs to."""
        return hashlib.sha256(self.checksum_file).digest()

    def check_belongs_to(self, os_image_hash: bytes) -> None:
        """MeasurementError unless this document is the one of the image `os_image_hash`."""
        if self.os_image_hash != os_image_hash:
            raise MeasurementError(
                f"sha256(sha256sum.txt) is {self.os_image_hash.hex()[:16]}…, not the "
                f"os_image_hash {os_image_hash.hex()[:16]}…"
            )


def read_document(checksum_file: bytes, measurement_bytes: bytes) -> MeasurementDocument:
    """Bind the two files: MeasurementError unless the manifest lists the cbor's SHA-256 and the
    cbor decodes strictly."""
    listed = manifest_entry(checksum_file, MEASUREMENT_FILE)
    actual = hashlib.sha256(measurement_bytes).digest()
    if listed != actual:
        raise MeasurementError(
            f"{MEASUREMENT_FILE} hashes to {actual.hex()[:16]}… but sha256sum.txt lists "
            f"{listed.hex()[:16]}…"
        )
    return MeasurementDocument(
        checksum_file, measurement_bytes, parse_measurement(measurement_bytes)
    )


def document_from_vm_config(vm_config: Mapping[str, Any]) -> MeasurementDocument | None:
    """The document in `vm_config.tdx_measurement` (base64 fields), None when absent.
    MeasurementError when present but malformed or unbound."""
    attached = vm_config.get("tdx_measurement")
    if attached is None:
        return None
    if not isinstance(attached, Mapping):
        raise MeasurementError("vm_config.tdx_measurement is not an object")
    files: list[bytes] = []
    for name in ("checksum_file", "measurement"):
        text = attached.get(name)
        if not isinstance(text, str):
            raise MeasurementError(f"vm_config.tdx_measurement.{name} is not a string")
        try:
            files.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise MeasurementError(f"vm_config.tdx_measurement.{name} is not base64") from None
    return read_document(files[0], files[1])


def document_as_vm_config(document: MeasurementDocument) -> dict[str, str]:
    """The `vm_config.tdx_measurement` object for a document (what a dstack VMM attaches)."""
    return {
        "measurement": base64.b64encode(document.measurement_bytes).decode(),
        "checksum_file": base64.b64encode(document.checksum_file).decode(),
    }
