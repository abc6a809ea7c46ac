"""The verifier's steps in order: evidence in, a named result per step, a verdict out.

Each step checks one link of the chain of trust (see the README, "What VERIFIED means") and lives
with the rules it changes with: Intel's (intel_checks), the platform's (platform_checks), dstack's
event log (event_log_checks) and oauth3's own bindings (binding_checks). A step passes only when
it checked its link completely against values the relying party gave; a link that holds but was
compared with nothing ends UNPINNED, an unproven freshness NOT_FRESH, a check not made SKIPPED.
Any exception inside a step is that step's failure, never a pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .binding_checks import check_info_binding, check_nonce
from .event_log_checks import check_compose, check_event_log
from .intel_checks import (
    INTEL_ROOT_CA_SHA256,
    ChainFacts,
    chain_facts,
    check_hardware,
    check_quote,
    check_simulated,
    check_tcb_policy,
    collateral_identity,
)
from .platform_checks import check_platform
from .platform_identity import measurements
from .step_basics import CheckState, Evidence, VerifyOptions, fail, guarded
from .verdict import (
    EvidenceStep,
    Outcome,
    Step,
    StepName,
    StepResult,
    Verdict,
    rfc3339,
)

if TYPE_CHECKING:
    import dcap_qvl

__all__ = [
    "INTEL_ROOT_CA_SHA256",
    "ChainFacts",
    "Evidence",
    "EvidenceStep",
    "Outcome",
    "Step",
    "StepName",
    "StepResult",
    "Verdict",
    "VerifyOptions",
    "chain_facts",
    "collateral_identity",
    "fail",
    "guarded",
    "run_steps",
]


def _evidence_facts(evidence: Evidence) -> dict[str, Any]:
    facts: dict[str, Any] = {"origin": evidence.origin}
    if evidence.fetched_at is not None:
        facts["fetched_at"] = rfc3339(evidence.fetched_at)
        facts["fetched_at_source"] = (
            "the bundle's own claim, unproven" if evidence.origin == "bundle" else "this run"
        )
    return facts


def run_steps(
    evidence: Evidence, options: VerifyOptions, collateral: dcap_qvl.QuoteCollateralV3 | None
) -> Verdict:
    """Run every step in order (each fail-closed) and return the verdict; never raises."""
    state = CheckState()
    steps = [
        guarded(Step.QUOTE, lambda: check_quote(evidence, state)),
        guarded(Step.SIMULATED, lambda: check_simulated(state, options)),
        guarded(Step.HARDWARE, lambda: check_hardware(evidence, state, options, collateral)),
        guarded(Step.TCB_POLICY, lambda: check_tcb_policy(state, options, collateral)),
        guarded(Step.PLATFORM, lambda: check_platform(evidence, state, options)),
        guarded(Step.INFO_BINDING, lambda: check_info_binding(evidence, state)),
        guarded(Step.NONCE, lambda: check_nonce(evidence, state)),
        guarded(Step.EVENT_LOG, lambda: check_event_log(evidence, state)),
        guarded(Step.COMPOSE, lambda: check_compose(evidence, state, options)),
    ]
    report = state.report
    boot = state.log.boot if state.log is not None else None
    return Verdict(
        steps=tuple(steps),
        checked_at=options.at,
        simulated=state.simulated,
        report_data=state.quote.report.report_data if state.quote is not None else None,
        compose_hash=boot.compose_hash if boot is not None else None,
        app_id=boot.app_id if boot is not None else None,
        key_provider=boot.key_provider_payload if boot is not None else None,
        instance_id=boot.instance_id if boot is not None else None,
        tcb_status=str(report.status) if report is not None else None,
        advisory_ids=tuple(str(a) for a in report.advisory_ids) if report is not None else (),
        measurements=(
            {k: v.hex() for k, v in measurements(state.quote.report).items()}
            if state.quote is not None
            else {}
        ),
        root_ca_sha256=state.verified_root,
        evidence=_evidence_facts(evidence),
        collateral=(
            collateral_identity(evidence.quote, collateral) if collateral is not None else None
        ),
    )
