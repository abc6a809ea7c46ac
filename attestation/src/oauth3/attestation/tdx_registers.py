"""Expected MRTD and RTMR0-2 of a dstack TDX guest from its OS measurement document, as dstack-mr's
"lite" path computes them (`dstack-mr/src/tdx.rs:346-414`).

Inputs: the image-static document (`measurement_document`), the VM shape the host declares in
`vm_config` (memory size, QEMU version, page-add order) and the three ACPI digests, which dstack
does not recompute on this path either: they come from the event log's named RTMR0 events (or
from the relying party's pins). The shape only selects an expected value; the quote must match.

- MRTD: the document's single-pass or two-pass candidate. dstack passes
  `vm_config.qemu_single_pass_add_pages` into the `two_pass_add_pages` option (`tdx.rs:75`), so
  a `true` there selects the *two-pass* candidate; copied as is, since that is what dstack (and
  Phala's Trust Center) accept. Absent, QEMU 8.x means two-pass and 9 or later single-pass; QEMU
  before 8.0 is refused (`machine.rs:67-90`); the default version is 9.1.0.
- RTMR0: TD HOB, the CFV digest, EFI variables SecureBoot, PK, KEK, db, dbx, a separator, the
  ACPI loader, RSDP and tables digests, BootOrder and Boot0000 (`tdvf.rs:35-74`).
- RTMR1: the QEMU-patched kernel's Authenticode digest, then four fixed EFI events.
- RTMR2: the measured command line, then the initrd.
Memory sizes other than exactly 2 GiB or at least 0xB0000000 are refused: only there does the
document's kernel digest hold (`tdx.rs:351-360`, `kernel.rs:10-20`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import MeasurementError
from .eventlog import Event
from .measurement_document import TdxImageMeasurement
from .td_hob import HIGH_MEMORY_SPLIT, decode_witness, td_hob_digest

RTMR_SIZE = 48
COMPAT_2G_MEMORY = 2 * 1024**3
DEFAULT_QEMU_VERSION = (9, 1, 0)
ACPI_DATA_EVENT_TYPE = 10
ACPI_DATA_PAYLOAD = b"ACPI DATA"
ACPI_EVENT_NAMES = ("acpi-loader", "acpi-rsdp", "acpi-tables")
CFV_DIGEST = bytes.fromhex(
    "344bc51c980ba621aaa00da3ed7436f7d6e549197dfe699515dfa2c6583d95e6"
    "412af21c097d473155875ffd561d6790"
)
BOOT0000_PRE202505_DIGEST = bytes.fromhex(
    "23ada07f5261f12f34a0bd8e46760962d6b4d576a416f1fea1c64bc656b1d28e"
    "acf7047ae6e967c58fd2a98bfa74c298"
)
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
RTMR1_FIXED_EVENTS = (
    b"Calling EFI Application from Boot Option",
    b"\x00\x00\x00\x00",
    b"Exit Boot Services Invocation",
    b"Exit Boot Services Returned with Success",
)


def sha384(data: bytes) -> bytes:
    """SHA-384 of `data`."""
    return hashlib.sha384(data).digest()


def replay(digests: Iterable[bytes]) -> bytes:
    """An RTMR after extending 48 zero bytes with each digest in turn."""
    register = bytes(RTMR_SIZE)
    for digest in digests:
        register = sha384(register + digest)
    return register


def efi_variable_digest(vendor_guid: str, name: str) -> bytes:
    """The RTMR0 digest OVMF measures for an empty EFI variable (dstack `tdvf.rs:132-139`)."""
    utf16 = name.encode("utf-16-le")
    body = uuid.UUID(vendor_guid).bytes_le + len(name).to_bytes(8, "little") + bytes(8) + utf16
    return sha384(body)


@dataclass(frozen=True, slots=True)
class AcpiDigests:
    """The SHA-384 of QEMU's three ACPI blobs, and where they came from (the log or a pin)."""

    loader: bytes
    rsdp: bytes
    tables: bytes
    source: str

    def as_json(self) -> dict[str, str]:
        """Hex digests by dstack's event name, plus the source."""
        return {
            "acpi-loader": self.loader.hex(),
            "acpi-rsdp": self.rsdp.hex(),
            "acpi-tables": self.tables.hex(),
            "source": self.source,
        }


def acpi_digests_from_log(events: Sequence[Event]) -> AcpiDigests:
    """The three named RTMR0 `ACPI DATA` events' digests, as dstack-verifier reads them
    (`verifier/src/verification.rs:538-585`). MeasurementError unless there are exactly three,
    each name exactly once, each 48 bytes."""
    acpi = [
        e
        for e in events
        if e.imr == 0
        and e.event_type == ACPI_DATA_EVENT_TYPE
        and e.event_payload == ACPI_DATA_PAYLOAD
    ]
    if len(acpi) != 3:
        raise MeasurementError(
            f"the event log has {len(acpi)} RTMR0 ACPI DATA events, not the 3 named ones "
            "(acpi-loader, acpi-rsdp, acpi-tables) dstack's lite path needs"
        )
    found: list[bytes] = []
    for name in ACPI_EVENT_NAMES:
        named = [e.digest for e in acpi if e.event == name]
        if len(named) != 1 or len(named[0]) != RTMR_SIZE:
            raise MeasurementError(f"the event log has no single 48-byte RTMR0 event named {name}")
        found.append(named[0])
    return AcpiDigests(found[0], found[1], found[2], "event log (ACPI contents not verified)")


@dataclass(frozen=True, slots=True)
class VmShape:
    """What of `vm_config` the lite computation reads: RAM and the QEMU page-add order."""

    memory_size: int
    qemu_version: tuple[int, int, int]
    two_pass_add_pages: bool
    ovmf_variant: str | None = None  # when vm_config names one, the document's must be it

    def as_json(self) -> dict[str, Any]:
        """For reports: memory in bytes, the QEMU version and the MRTD candidate it selects."""
        return {
            "memory_size": self.memory_size,
            "qemu_version": ".".join(map(str, self.qemu_version)),
            "mrtd_candidate": "two_pass" if self.two_pass_add_pages else "single_pass",
        }


def parse_qemu_version(text: str) -> tuple[int, int, int]:
    """`major.minor.patch` as dstack-mr reads it; MeasurementError otherwise or before 8.0.0."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and int(p) < 1 << 32 for p in parts):
        raise MeasurementError(f"QEMU version {text!r} is not major.minor.patch")
    version = (int(parts[0]), int(parts[1]), int(parts[2]))
    if version < (8, 0, 0):
        raise MeasurementError(f"QEMU {text} is older than 8.0.0, which dstack-mr refuses")
    return version


def shape_from_vm_config(vm_config: Mapping[str, Any]) -> VmShape:
    """The VM shape a `vm_config` declares (untrusted: it only selects what to expect)."""
    memory = vm_config.get("memory_size")
    if not isinstance(memory, int) or isinstance(memory, bool) or not 0 < memory < 1 << 64:
        raise MeasurementError("vm_config.memory_size is not a positive 64-bit integer")
    text = vm_config.get("qemu_version")
    if text is not None and not isinstance(text, str):
        raise MeasurementError("vm_config.qemu_version is not a string")
    version = parse_qemu_version(text) if text else DEFAULT_QEMU_VERSION
    flag = vm_config.get("qemu_single_pass_add_pages")
    if flag is not None and not isinstance(flag, bool):
        raise MeasurementError("vm_config.qemu_single_pass_add_pages is not a boolean")
    two_pass = flag if flag is not None else (8, 0, 0) <= version < (9, 0, 0)
    ovmf = vm_config.get("ovmf_variant")
    if ovmf is not None and not isinstance(ovmf, str):
        raise MeasurementError("vm_config.ovmf_variant is not a string")
    return VmShape(memory, version, two_pass, ovmf)


def check_memory_supported(memory_size: int) -> None:
    """MeasurementError unless the document's kernel digest holds at this RAM size."""
    if memory_size != COMPAT_2G_MEMORY and memory_size < HIGH_MEMORY_SPLIT:
        raise MeasurementError(
            f"memory_size {memory_size} bytes ({memory_size // 2**20} MiB) is refused: dstack's "
            f"measurement document holds only at exactly 2048 MiB or from "
            f"{HIGH_MEMORY_SPLIT // 2**20} MiB on, where QEMU places the initrd the same way"
        )


@dataclass(frozen=True, slots=True)
class TdxRegisters:
    """Expected MRTD and RTMR0-2, with the event digests each RTMR replays."""

    mrtd: bytes
    rtmr0_events: tuple[bytes, ...]
    rtmr1_events: tuple[bytes, ...]
    rtmr2_events: tuple[bytes, ...]

    @property
    def rtmr0(self) -> bytes:
        """RTMR0 replayed from its 13 events."""
        return replay(self.rtmr0_events)

    @property
    def rtmr1(self) -> bytes:
        """RTMR1 replayed from its 5 events."""
        return replay(self.rtmr1_events)

    @property
    def rtmr2(self) -> bytes:
        """RTMR2 replayed from its 2 events."""
        return replay(self.rtmr2_events)

    def as_dict(self) -> dict[str, bytes]:
        """By platform pin name: mrtd, rtmr0, rtmr1, rtmr2."""
        return {"mrtd": self.mrtd, "rtmr0": self.rtmr0, "rtmr1": self.rtmr1, "rtmr2": self.rtmr2}


def rtmr0_events(td_hob_sha384: bytes, acpi: AcpiDigests) -> tuple[bytes, ...]:
    """RTMR0's 13 event digests for the pre-202505 OVMF (dstack `tdvf.rs:35-74`)."""
    separator = sha384(bytes(4))
    return (
        td_hob_sha384,
        CFV_DIGEST,
        efi_variable_digest(EFI_GLOBAL_VARIABLE, "SecureBoot"),
        efi_variable_digest(EFI_GLOBAL_VARIABLE, "PK"),
        efi_variable_digest(EFI_GLOBAL_VARIABLE, "KEK"),
        efi_variable_digest(EFI_IMAGE_SECURITY_DATABASE, "db"),
        efi_variable_digest(EFI_IMAGE_SECURITY_DATABASE, "dbx"),
        separator,
        acpi.loader,
        acpi.rsdp,
        acpi.tables,
        sha384(bytes(2)),
        BOOT0000_PRE202505_DIGEST,
    )


def rtmr1_events(kernel_authenticode: bytes) -> tuple[bytes, ...]:
    """RTMR1's 5 event digests: the patched kernel's Authenticode digest, then fixed EFI events."""
    return (kernel_authenticode, *(sha384(text) for text in RTMR1_FIXED_EVENTS))


def expected_registers(
    measurement: TdxImageMeasurement, shape: VmShape, acpi: AcpiDigests
) -> TdxRegisters:
    """MRTD and RTMR0-2 the image boots to in a VM of this shape with these ACPI blobs.
    MeasurementError for a refused memory size, another OVMF variant than the shape names, or
    an unreadable TD HOB witness."""
    check_memory_supported(shape.memory_size)
    if shape.ovmf_variant is not None and shape.ovmf_variant != measurement.ovmf_variant:
        raise MeasurementError(
            f"vm_config names OVMF variant {shape.ovmf_variant!r}, the measurement document "
            f"{measurement.ovmf_variant!r} (dstack verification.rs:1005-1014 refuses this too)"
        )
    witness = decode_witness(measurement.td_hob_witness)
    mrtd = measurement.mrtd_two_pass if shape.two_pass_add_pages else measurement.mrtd_single_pass
    return TdxRegisters(
        mrtd=mrtd,
        rtmr0_events=rtmr0_events(td_hob_digest(witness, shape.memory_size), acpi),
        rtmr1_events=rtmr1_events(measurement.kernel_authenticode),
        rtmr2_events=(measurement.cmdline_sha384, measurement.initrd_sha384),
    )
