"""The platform step: the TD's measured firmware and OS (MRTD, RTMR0-2) against a pinned dstack OS
release or pinned registers, and never a debug TD. These change with the platform and its OS; the
OS facts themselves live in platform_identity and os_release."""

from __future__ import annotations

from typing import Any

from oauth3.attestation import TdReport

from .event_log_checks import log_reading
from .os_release import ReleaseMismatch, check_release_pins, recompute
from .platform_identity import (
    OsIdentity,
    PlatformMismatch,
    check_os,
    identify_os,
    measurements,
    parse_vm_config,
    vouched_by,
)
from .policy import PlatformPin, Policy
from .step_basics import CheckState, Evidence, VerifyOptions, fail, needs_quote
from .verdict import Outcome, Step, StepResult


def check_platform(evidence: Evidence, state: CheckState, options: VerifyOptions) -> StepResult:
    report = needs_quote(state).report
    measured = measurements(report)
    details: dict[str, Any] = {k: v.hex() for k, v in measured.items()}
    if report.debug:
        raise fail(
            "the TD runs in DEBUG mode: the host can read and change its memory, so nothing it "
            "reports can be trusted",
            details,
        )
    vm_config = parse_vm_config(evidence.vm_config)
    details["vm_config"] = vm_config
    log = log_reading(evidence, state)
    measured_os = log.boot.os_image_hash if log.boot is not None else None
    policy = options.policy
    try:
        recomputed = recompute(vm_config, log.events if log.error is None else None, report, policy)
        details["release"] = {"recomputation": recomputed.describe(), **recomputed.details}
        if measured_os is not None and measured_os != recomputed.os_image_hash:
            details["release"]["rtmr3_os_image_hash"] = measured_os.hex()
        release_pin = check_release_pins(recomputed, policy)
        identity = identify_os(measured_os, vm_config, recomputed.os_image_hash)
        details["os"] = identity.as_json()
        check_os(identity, policy)
    except (PlatformMismatch, ReleaseMismatch) as exc:
        raise fail(str(exc), details) from None
    pins = policy.platforms
    matching = [pin for pin in pins if not pin.mismatches(measured)]
    if pins and not matching:
        wrong = "; ".join(
            f"{pin.name or f'pin {i}'}: {', '.join(pin.mismatches(measured))}"
            for i, pin in enumerate(pins[:3])
        )
        raise fail(f"the platform matches none of the pinned platforms ({wrong})", details)
    os_text = identity.describe()
    if release_pin is not None:
        details["vouched_by"] = f"your pinned OS release ({policy.source})"
        return StepResult(
            Step.PLATFORM,
            Outcome.PASS,
            f"not debug; MRTD and RTMR0-2 are exactly what the pinned OS release boots to "
            f"({os_text}); {recomputed.describe()}",
            details,
        )
    return _platform_by_register_pins(identity, report, policy, matching, details)


def _platform_by_register_pins(
    identity: OsIdentity,
    report: TdReport,
    policy: Policy,
    matching: list[PlatformPin],
    details: dict[str, Any],
) -> StepResult:
    os_text = identity.describe()
    if not matching:
        details["vouched_by"] = vouched_by(identity, report, None)
        return StepResult(
            Step.PLATFORM,
            Outcome.UNPINNED,
            "nothing pins MRTD and RTMR0-2 (give --expect-os-image-hash, --policy or "
            f"--expect-mrtd/--expect-rtmr0-2); OS: {os_text}; vouched for by "
            f"{details['vouched_by']}",
            details,
        )
    pin = matching[0]
    details["pin"] = pin.name
    details["vouched_by"] = vouched_by(identity, report, policy.source)
    pinned = ", ".join(k for k in pin.values)
    if pin.missing:
        return StepResult(
            Step.PLATFORM,
            Outcome.UNPINNED,
            f"{pinned} match, but {', '.join(pin.missing)} are not pinned; OS: {os_text}",
            details,
        )
    return StepResult(
        Step.PLATFORM,
        Outcome.PASS,
        f"not debug; {pinned} match the pinned platform{f' {pin.name!r}' if pin.name else ''}; "
        f"OS: {os_text}; vouched for by {details['vouched_by']}",
        details,
    )
