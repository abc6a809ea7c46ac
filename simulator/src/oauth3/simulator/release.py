"""A simulated dstack OS release, booted the dstack 0.6 "lite" way.

The release is a synthetic `measurement.tdx.cbor` (kernel, initrd, command line and MRTD digests
derived from the seed) listed in a `sha256sum.txt` that also lists a file named
`OAUTH3-SIMULATED-RELEASE-NOT-A-DSTACK-IMAGE`, so its `os_image_hash = sha256(sha256sum.txt)` is in
no table of dstack releases. The host attaches both files to `vm_config.tdx_measurement`, as a
dstack 0.6 VMM does, and the simulated firmware measures exactly what the attestation package's
recomputation (dstack-mr's lite path) expects: MRTD, the TD HOB for the VM's memory, the fixed
firmware events, the three named ACPI events (their digests the VM's own), kernel, command line
and initrd. A verifier can therefore pin the release, not the registers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from oauth3.attestation import Event
from oauth3.attestation.measurement_document import (
    MEASUREMENT_FILE,
    MeasurementDocument,
    TdxImageMeasurement,
    document_as_vm_config,
    read_document,
)
from oauth3.attestation.tdx_registers import (
    ACPI_EVENT_NAMES,
    AcpiDigests,
    TdxRegisters,
    VmShape,
    expected_registers,
)

NOTICE_FILE = "OAUTH3-SIMULATED-RELEASE-NOT-A-DSTACK-IMAGE"
NOTICE = b"oauth3 simulator: a synthetic OS release for development, never a dstack image\n"
IMAGE_NAME = "oauth3-simulated-release"
# dstack 0.6.0's TD HOB witness (its OVMF's accepted sections), so the HOB is shaped as a real one
TD_HOB_WITNESS = bytes.fromhex("80100904000609020b021010")
OVMF_VARIANT = "pre202505"
KERNEL_CMDLINE = "console=ttyS0 init=/init panic=1 oauth3.simulated_release=1"
Derive = Callable[[str, int], bytes]


@dataclass(frozen=True, slots=True)
class SimulatedRelease:
    """The release's measurement document and what it boots to in this VM."""

    document: MeasurementDocument
    registers: TdxRegisters

    @property
    def os_image_hash(self) -> bytes:
        """sha256(sha256sum.txt), the name a relying party pins."""
        return self.document.os_image_hash

    def vm_config_fields(self) -> dict[str, object]:
        """What a dstack 0.6 VMM adds to vm_config for a lite boot of this release."""
        return {
            "image": IMAGE_NAME,
            "host_share_mode": "9p",
            "ovmf_variant": OVMF_VARIANT,
            "tdx_attestation_variant": "lite",
            "tdx_measurement": document_as_vm_config(self.document),
        }


def cmdline_payload() -> bytes:
    """The command line as the boot loader measures it: UTF-16LE with the initrd argument."""
    return (KERNEL_CMDLINE + " initrd=initrd").encode("utf-16-le") + b"\0\0"


def simulated_release(derive: Derive, shape: VmShape) -> SimulatedRelease:
    """The seed's release, and the registers it boots to in a VM of `shape`."""
    measurement = TdxImageMeasurement(
        cmdline_sha384=hashlib.sha384(cmdline_payload()).digest(),
        kernel_authenticode=derive("release/kernel-authenticode", 48),
        initrd_sha384=derive("release/initrd", 48),
        ovmf_variant=OVMF_VARIANT,
        mrtd_single_pass=derive("release/mrtd-single-pass", 48),
        mrtd_two_pass=derive("release/mrtd-two-pass", 48),
        td_hob_witness=TD_HOB_WITNESS,
    )
    cbor = measurement.to_cbor()
    manifest = (
        f"{hashlib.sha256(NOTICE).hexdigest()}  {NOTICE_FILE}\n"
        f"{hashlib.sha256(cbor).hexdigest()}  {MEASUREMENT_FILE}\n"
    ).encode()
    document = read_document(manifest, cbor)
    loader, rsdp, tables = (derive(f"vm/{name}", 48) for name in ACPI_EVENT_NAMES)
    acpi = AcpiDigests(loader, rsdp, tables, source="the simulated VM")
    return SimulatedRelease(document, expected_registers(measurement, shape, acpi))


def measured_as_released(events: Sequence[Event], registers: TdxRegisters) -> list[Event]:
    """The firmware events (RTMR0-2, in log order) with the digests this release boots to, and
    the ACPI events named as dstack 0.6 names them. ValueError when the counts differ."""
    expected = {0: registers.rtmr0_events, 1: registers.rtmr1_events, 2: registers.rtmr2_events}
    used = dict.fromkeys(expected, 0)
    acpi_names = iter(ACPI_EVENT_NAMES)
    out = []
    for event in events:
        if event.imr not in expected:
            out.append(event)
            continue
        digest = expected[event.imr][used[event.imr]]
        used[event.imr] += 1
        name = next(acpi_names) if event.event_payload == b"ACPI DATA" else event.event
        out.append(replace(event, digest=digest, event=name))
    if any(used[imr] != len(digests) for imr, digests in expected.items()):
        raise ValueError(f"the boot log has {used} firmware events, the release measures other")
    return out
