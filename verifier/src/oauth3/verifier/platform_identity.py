"""The platform link: the TD's measured firmware and OS against the relying party's pins, and the
OS named from a shipped table of dstack releases.

What the quote's signed registers say is evidence; what the host says (`vm_config`) is not: it is
read only to look the OS up and to explain, and when it contradicts a measurement the check fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from oauth3.attestation import TdReport
from oauth3.attestation.dstack_os import OsRelease, release_for

from .policy import Policy


def measurements(report: TdReport) -> dict[str, bytes]:
    """The registers a platform pin compares, by pin name (signed by the quote)."""
    return {
        "mrtd": report.mr_td,
        "rtmr0": report.rtmr[0],
        "rtmr1": report.rtmr[1],
        "rtmr2": report.rtmr[2],
        "mrseam": report.mr_seam,
        "xfam": report.xfam,
        "td_attributes": report.td_attributes,
        "tee_tcb_svn": report.tee_tcb_svn,
    }


def parse_vm_config(text: str | None) -> dict[str, Any] | None:
    """The host's vm_config as a JSON object, or None when absent or unreadable (untrusted)."""
    if not text:
        return None
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


MEASURED = "measured in RTMR3"
RECOMPUTED = "recomputed: vm_config's measurement document boots to the quote's registers"
# without a measured os-image-hash (dstack without a KMS) the host's vm_config is all that names
# the OS, so it cannot decide anything: the RTMR0-2 pins (kernel, initrd, command line) do
UNMEASURED = "which image booted, dev or production, rests on the RTMR0-2 pins"


@dataclass(frozen=True, slots=True)
class OsIdentity:
    """Which OS image the evidence names, from where, and what the table says of it."""

    os_image_hash: bytes | None
    named_from: str
    release: OsRelease | None

    @property
    def measured(self) -> bool:
        """True when the name is evidence: recomputed from the release, or measured by the OS
        into RTMR3 (dstack with a KMS); False when it is only the host's word."""
        return self.named_from in (MEASURED, RECOMPUTED)

    def describe(self) -> str:
        """One phrase: the OS and where its name came from. Unmeasured, a name is the host's
        word: whether a dev or a production image booted then rests on RTMR0-2 alone."""
        if self.os_image_hash is None:
            return f"not measured and not named; {UNMEASURED}"
        short = self.os_image_hash.hex()[:16] + "…"
        where = self.named_from if self.measured else f"{self.named_from}, not measured"
        if self.release is None:
            named = f"os_image_hash {short} ({where}) is not in the table of dstack releases"
        else:
            named = f"{self.release.label} by os_image_hash {short} ({where})"
        return named if self.measured else f"{named}; {UNMEASURED}"

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form for step details."""
        release = self.release
        return {
            "os_image_hash": self.os_image_hash.hex() if self.os_image_hash else None,
            "named_from": self.named_from,
            "measured": self.measured,
            "image": release.image if release else None,
            "version": release.version if release else None,
            "dev": release.dev if release else None,
            "source": release.source if release else None,
            "published_mrtd": release.mrtd.hex() if release and release.mrtd else None,
        }


class PlatformMismatch(Exception):
    """The host's claims contradict the measurements, or the OS is refused by policy."""


def identify_os(
    measured_hash: bytes | None,
    vm_config: Mapping[str, Any] | None,
    recomputed_hash: bytes | None = None,
) -> OsIdentity:
    """Name the OS: a release recomputed to the quote's registers first (what dstack-verifier
    reports; RTMR3's os-image-hash is then only the KMS's echo, see `os_release`), else the OS's
    own RTMR3 measurement, else the host's vm_config (explanation only). PlatformMismatch when
    RTMR3 and an unrecomputed vm_config disagree: the host describes an OS it did not boot."""
    if recomputed_hash is not None:
        return OsIdentity(recomputed_hash, RECOMPUTED, release_for(recomputed_hash))
    claimed_text = vm_config.get("os_image_hash") if vm_config is not None else None
    claimed: bytes | None = None
    if isinstance(claimed_text, str):
        try:
            claimed = bytes.fromhex(claimed_text)
        except ValueError:
            claimed = None
    if measured_hash is not None and claimed is not None and claimed != measured_hash:
        raise PlatformMismatch(
            f"vm_config names os_image_hash {claimed.hex()[:16]}… but the OS measured "
            f"{measured_hash.hex()[:16]}… into RTMR3: the host describes an OS it did not boot"
        )
    if measured_hash is not None:
        return OsIdentity(measured_hash, MEASURED, release_for(measured_hash))
    if claimed is not None:
        return OsIdentity(claimed, "host-supplied vm_config", release_for(claimed))
    return OsIdentity(None, "nowhere", None)


def check_os(identity: OsIdentity, policy: Policy) -> None:
    """Refuse a dev image unless the policy allows it (its root login makes RTMR3 untrusted)."""
    release = identity.release
    if release is not None and release.dev and not policy.allow_dev_os:
        raise PlatformMismatch(
            f"{release.label} is refused: dev images allow root login into the CVM "
            "(allow them with --allow-dev-os or [os] allow_dev = true)"
        )


def vouched_by(identity: OsIdentity, report: TdReport, pinned_by: str | None) -> str:
    """Which source vouches for the platform: the relying party's pins, a published MRTD (the
    firmware only), or nothing at all."""
    if pinned_by is not None:
        return f"your pins ({pinned_by})"
    release = identity.release
    if release is not None and release.mrtd is not None and release.mrtd == report.mr_td:
        return (
            f"only the MRTD published for {release.image} ({release.mrtd_source}); "
            "RTMR0-2 are not pinned"
        )
    return "nothing: no pin, and no published value matches"
