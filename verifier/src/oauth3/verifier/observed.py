"""What one verification observed, as a policy for the relying party to review and keep
(`oauth3-verify --write-policy FILE`)."""

from __future__ import annotations

from .platform_identity import RECOMPUTED
from .policy import PlatformPin, Policy, measured_key_provider, render_policy
from .verdict import Step, Verdict

# written as commented-out suggestions: they tie a policy to one TDX module and TD shape
OPTIONAL_OBSERVED = ("mrseam", "xfam", "td_attributes")


def recomputed_release(verdict: Verdict) -> bytes | None:
    """The OS release the platform step recomputed to the quote's registers, if it did."""
    platform = next((s for s in verdict.steps if s.name == Step.PLATFORM), None)
    os_facts = platform.details.get("os", {}) if platform is not None else {}
    if os_facts.get("named_from") != RECOMPUTED or not os_facts.get("os_image_hash"):
        return None
    return bytes.fromhex(os_facts["os_image_hash"])


def observed_policy(verdict: Verdict, previous: Policy) -> Policy:
    """The policy a verification observed: its app and key provider, its OS release when one was
    recomputed (else its platform registers), TCB status and advisories (and a simulator's mock
    root)."""
    measured = verdict.measurements
    values = {k: bytes.fromhex(measured[k]) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")}
    release = recomputed_release(verdict)
    provider = measured_key_provider(verdict.key_provider)
    return Policy(
        compose_hashes=frozenset([verdict.compose_hash] if verdict.compose_hash else []),
        app_ids=frozenset([verdict.app_id] if verdict.app_id else []),
        key_providers=frozenset([provider] if provider is not None else []),
        platforms=() if release else (PlatformPin(name="observed", values=values),),
        os_image_hashes=frozenset([release] if release else []),
        allowed_tcb=frozenset([verdict.tcb_status]) if verdict.tcb_status else previous.allowed_tcb,
        allowed_advisories=frozenset(verdict.advisory_ids),
        min_tcb_evaluation=previous.min_tcb_evaluation,
        allow_dev_os=previous.allow_dev_os,
        simulated_root_sha256=verdict.root_ca_sha256 if verdict.simulated else None,
    )


def observed_policy_text(verdict: Verdict, previous: Policy, observed_from: str) -> str:
    """The commented TOML of `observed_policy`, with MRSEAM, XFAM, TD attributes and the TCB
    evaluation number as commented suggestions."""
    optional = {k: bytes.fromhex(verdict.measurements[k]) for k in OPTIONAL_OBSERVED}
    evaluation = (verdict.collateral or {}).get("tcb_evaluation_data_number")
    return render_policy(
        observed_policy(verdict, previous),
        observed_from,
        optional,
        evaluation if isinstance(evaluation, int) else None,
    )


def written_note(path: str, verdict: Verdict) -> str:
    """The line that says the policy was written, and what to check before relying on it."""
    written = f"policy written to {path}: review every value out of band, then use --policy {path}"
    platform = next((s for s in verdict.steps if s.name == Step.PLATFORM), None)
    if platform is not None and not platform.details.get("os", {}).get("measured", True):
        # the only name this OS has is the host's: the pinned registers may be a dev image's
        written += (
            "; the OS image was not measured (no KMS), so compare RTMR0-2 with the release "
            "you expect (oauth3-measure, dstack-mr) before relying on them"
        )
    return written
