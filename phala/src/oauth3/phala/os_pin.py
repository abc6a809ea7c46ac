"""How a deployment's platform will be verified, decided before commit, and oauth3-verify's pins.

The verify step pins the OS release the backend provisioned (`--expect-os-image-hash`): the
verifier then recomputes MRTD and RTMR0-2 from the release's measurement document
(`measurement.tdx.cbor`, attached to `vm_config` by dstack 0.6 hosts) and requires them to be the
quote's. A release that ships no document can never pass that pin, so a deployment of one is
refused before commit unless the user's policy pins the platform's registers (`[[platform]]`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from oauth3.attestation.dstack_os import OsRelease, release_for
from oauth3.verifier.policy import Policy

BY_RELEASE = "release"
BY_REGISTERS = "registers"
BY_POLICY = "policy"
# dstack's images list measurement.tdx.cbor in sha256sum.txt from 0.6 on (the OS table's note)
FIRST_VERSION_WITH_DOCUMENT = (0, 6)


class PlatformUnverifiable(Exception):
    """Before commit: the deployment's platform could never be verified; the message says what
    to do instead."""


def ships_document(release: OsRelease) -> bool:
    """Whether the release ships a measurement document: the OS table's word where it gives one,
    else dstack's rule that releases from 0.6 on do."""
    if release.measurement_document is not None:
        return release.measurement_document
    match = re.match(r"(\d+)\.(\d+)", release.version)
    return match is not None and (int(match[1]), int(match[2])) >= FIRST_VERSION_WITH_DOCUMENT


def _no_document(release: OsRelease) -> str:
    return (
        f"the backend chose OS image {release.image}, which ships no measurement document "
        "(measurement.tdx.cbor), so oauth3-verify cannot recompute its MRTD and RTMR0-2 and "
        "the CVM could never be verified; nothing was committed. Choose a release that ships "
        "one (dstack 0.6 or later), or give register pins: --policy FILE with a [[platform]] "
        "for this VM shape (MRTD, RTMR0-2, e.g. from oauth3-measure --image-dir)"
    )


def platform_pinning(image: bytes | None, policy: Policy | None) -> str:
    """How the verify step will pin the platform (BY_RELEASE, BY_REGISTERS or BY_POLICY);
    PlatformUnverifiable when nothing could pin it. `image` is None for an update, whose
    provision answer does not name the CVM's OS."""
    pins = policy or Policy()
    if image is None:
        if pins.os_image_hashes or pins.platforms:
            return BY_POLICY
        raise PlatformUnverifiable(
            "an update's provision answer does not name the OS the CVM runs, so the verify "
            "step has no release to pin; give --policy FILE pinning it ([os] image_hashes or "
            "a [[platform]]), or --no-verify; nothing was committed"
        )
    release = release_for(image)
    if release is None or ships_document(release):
        return BY_RELEASE
    if not pins.platforms:
        raise PlatformUnverifiable(_no_document(release))
    if pins.os_image_hashes:
        raise PlatformUnverifiable(
            f"your policy pins OS releases ([os] image_hashes), but {release.image} ships no "
            "measurement document, so that pin can never be checked; drop it and keep the "
            "[[platform]] pins; nothing was committed"
        )
    return BY_REGISTERS


def check_app_pins(facts: Mapping[str, Any], policy: Policy | None) -> None:
    """PlatformUnverifiable when the user's policy pins compose hashes or app ids and the
    provisioned ones are not among them (the verify step would refuse them after commit)."""
    if policy is None:
        return
    for key, pinned in (("compose_hash", policy.compose_hashes), ("app_id", policy.app_ids)):
        value = facts.get(key)
        if pinned and isinstance(value, str) and bytes.fromhex(value) not in pinned:
            raise PlatformUnverifiable(
                f"the provisioned {key} {value} is not one your policy pins ({policy.source}), "
                "so the CVM could never be verified against it; nothing was committed"
            )


def verify_pins(record: Mapping[str, Any], policy: Policy | None) -> list[str]:
    """oauth3-verify's pin flags for the deployment: the committed compose hash, the app id and
    (pinned by release) the provisioned OS release, each unless the user's policy pins that
    field already (the verifier takes a pin from one place only; the value was checked to be
    in the policy before commit)."""
    pins = policy or Policy()
    flags = []
    if not pins.compose_hashes:
        flags += ["--expect-compose-hash", str(record["compose_hash"])]
    if not pins.app_ids:
        flags += ["--expect-app-id", str(record["app_id"])]
    if record.get("platform_pinned_by") == BY_RELEASE and not pins.os_image_hashes:
        flags += ["--expect-os-image-hash", str(record["os_image_hash"])]
    return flags


def pinning_line(record: Mapping[str, Any]) -> str:
    """What the verify step proved about the platform, for the report."""
    how = record.get("platform_pinned_by")
    if how == BY_RELEASE:
        release = release_for(bytes.fromhex(str(record["os_image_hash"])))
        name = release.label if release else f"os_image_hash {record['os_image_hash']}"
        return (
            f"OS release {name}: MRTD and RTMR0-2 recomputed from its measurement document "
            "equal the quote's"
        )
    if how == BY_REGISTERS:
        return "platform: MRTD and RTMR0-2 match your policy's [[platform]] register pins"
    return "platform: pinned by your policy"
