"""Recompute a TD's MRTD and RTMR0-2 from the OS release its `vm_config` names, and decide which
`os_image_hash` is authoritative.

What dstack does (Dstack-TEE/dstack @ 312dc605):
- `os_image_hash` is `sha256(sha256sum.txt)` of the image (`dstack-types/src/lib.rs:1404-1470`);
  the VMM puts it, and the image's `measurement.tdx.cbor` with `sha256sum.txt`, in `vm_config`
  (`vmm/src/app.rs:1655-1690`). dstack-verifier trusts that hash only once the document replays
  to the quote's MRTD and RTMR0-2 (`verifier/src/verification.rs:966-1040`), and then reports
  the vm_config's hash as the OS (`verification.rs:728-731`): RTMR3 is never consulted for it.
- RTMR3's `os-image-hash` event is what the KMS answered in GetAppKey (`dstack-util/src/
  system_setup.rs:2150`): the hash the KMS read from the `vm_config` the guest sent it
  (`kms/src/main_service.rs:377,404`, `dstack-attest/src/attestation.rs:932-935`), checked by
  the KMS only when its image verification is on (`main_service.rs:290`). It is the same in 0.5.x
  (`kms/src/main_service.rs:337` at v0.5.11) and in 0.6. So on an unedited boot the two agree;
  they differ when vm_config changed after the KMS saw it. dstack's own lite fixture is such a
  case: captured when 0.6 builds named the image 07a2388c…, its vm_config was rewritten to the
  unified sha256(sha256sum.txt) = e6f5cfec… by "refactor: unify os image hash materials"
  (53defce6) without recapturing the quote, and dstack-verifier accepts it (it never reads RTMR3
  for the OS). vm_config is not signed, so that edit is harmless once the release recomputes.
So here: a release whose document recomputes to the quote is authenticated by the hardware and
names the OS; an RTMR3 value that differs is reported, not held against it. Without a document
that recomputes (a legacy boot, or an unsupported memory size), RTMR3 is the better witness and a
vm_config that contradicts it is refused, as before. A document that does not bind to its
`os_image_hash`, or a VM shape under which it recomputes to other registers than the quote's, is
the host describing a VM it did not boot: refused whether or not anything is pinned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oauth3.attestation import Event, TdReport
from oauth3.attestation.errors import MeasurementError
from oauth3.attestation.measurement_document import MeasurementDocument, document_from_vm_config
from oauth3.attestation.tdx_registers import (
    AcpiDigests,
    acpi_digests_from_log,
    expected_registers,
    shape_from_vm_config,
)

from .policy import Policy

REGISTER_LABELS = {"mrtd": "MRTD", "rtmr0": "RTMR0", "rtmr1": "RTMR1", "rtmr2": "RTMR2"}
ACPI_NAMES = ("loader", "rsdp", "tables")


class ReleaseMismatch(Exception):
    """The host's OS release or VM shape contradicts the quote (a lie, whatever is pinned)."""


@dataclass(frozen=True, slots=True)
class Recomputation:
    """What recomputing from `vm_config.tdx_measurement` showed: the release it authenticates,
    or why it could not be done."""

    document: MeasurementDocument | None = None
    registers: Mapping[str, bytes] = field(default_factory=dict)
    acpi: AcpiDigests | None = None
    unavailable: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def os_image_hash(self) -> bytes | None:
        """The release the quote provably boots, or None when nothing was recomputed."""
        return self.document.os_image_hash if self.document and not self.unavailable else None

    def describe(self) -> str:
        """What was recomputed and what was taken from where."""
        if self.unavailable is not None:
            return f"not recomputed: {self.unavailable}"
        acpi = self.acpi.source if self.acpi else "?"
        return (
            "MRTD, RTMR1, RTMR2 and RTMR0 (TD HOB, firmware and boot events) recomputed from the "
            f"release's measurement document; RTMR0's three ACPI digests from the {acpi}"
        )


def pinned_acpi(policy: Policy) -> AcpiDigests | None:
    """The ACPI digests the relying party pinned, if all three are."""
    pins = policy.acpi_digests
    if not pins:
        return None
    return AcpiDigests(pins["loader"], pins["rsdp"], pins["tables"], f"pins in {policy.source}")


def _acpi(events: Sequence[Event], policy: Policy) -> AcpiDigests:
    pinned = pinned_acpi(policy)
    try:
        logged = acpi_digests_from_log(events)
    except MeasurementError:
        if pinned is None:
            raise
        return pinned
    if pinned is not None:
        for name in ACPI_NAMES:
            if getattr(logged, name) != getattr(pinned, name):
                raise ReleaseMismatch(
                    f"the event log's ACPI {name} digest {getattr(logged, name).hex()[:16]}… "
                    f"is not the pinned {getattr(pinned, name).hex()[:16]}…"
                )
        return pinned
    return logged


def recompute(
    vm_config: Mapping[str, Any] | None,
    events: Sequence[Event] | None,
    report: TdReport,
    policy: Policy,
) -> Recomputation:
    """Recompute the registers of the release `vm_config` attaches and compare them with the
    quote's. ReleaseMismatch when the document or shape contradicts the quote; a Recomputation
    with `unavailable` set when it cannot be done (no document, refused shape, no ACPI events)."""
    if vm_config is None:
        return Recomputation(unavailable="no vm_config, so no measurement document")
    try:
        document = document_from_vm_config(vm_config)
    except MeasurementError as exc:
        raise ReleaseMismatch(f"vm_config's measurement document is refused: {exc}") from None
    if document is None:
        return Recomputation(
            unavailable="vm_config carries no measurement document (tdx_measurement): a legacy "
            "boot or an image without measurement.tdx.cbor"
        )
    claimed = vm_config.get("os_image_hash")
    try:
        document.check_belongs_to(bytes.fromhex(claimed) if isinstance(claimed, str) else b"")
    except (MeasurementError, ValueError) as exc:
        raise ReleaseMismatch(f"vm_config's measurement document is refused: {exc}") from None
    if vm_config.get("tdx_attestation_variant", "legacy") != "lite" and not policy.acpi_digests:
        return Recomputation(
            document,
            unavailable="vm_config declares the legacy scheme, for which dstack verifies the ACPI "
            "tables by running QEMU; oauth3 cannot, so pin the three ACPI digests",
        )
    try:
        shape = shape_from_vm_config(vm_config)
        acpi = _acpi(events or (), policy)
        expected = expected_registers(document.measurement, shape, acpi).as_dict()
    except MeasurementError as exc:
        return Recomputation(document, unavailable=str(exc))
    quoted = {"mrtd": report.mr_td, **{f"rtmr{i}": report.rtmr[i] for i in range(3)}}
    wrong = [
        f"{REGISTER_LABELS[k]} {quoted[k].hex()[:16]}… != recomputed {v.hex()[:16]}…"
        for k, v in expected.items()
        if quoted[k] != v
    ]
    if wrong:
        raise ReleaseMismatch(
            f"vm_config's release {document.os_image_hash.hex()[:16]}… in a VM of "
            f"{shape.memory_size} bytes, QEMU {'.'.join(map(str, shape.qemu_version))} does "
            f"not boot to the quote's registers ({'; '.join(wrong)})"
        )
    details = {"shape": shape.as_json(), "acpi": acpi.as_json()}
    return Recomputation(document, expected, acpi, details=details)


def check_release_pins(recomputed: Recomputation, policy: Policy) -> str | None:
    """None when no release is pinned; else the pinned release's name for the verdict.
    ReleaseMismatch when a pin cannot be checked or names another release."""
    pins = policy.os_image_hashes
    if not pins:
        return None
    found = recomputed.os_image_hash
    if found is None:
        raise ReleaseMismatch(
            f"an OS release is pinned but cannot be checked: {recomputed.unavailable}"
        )
    if found not in pins:
        raise ReleaseMismatch(
            f"the quote boots OS release {found.hex()[:16]}… (recomputed), which is not a "
            f"pinned release ({', '.join(sorted(p.hex()[:16] + '…' for p in pins))})"
        )
    return found.hex()
