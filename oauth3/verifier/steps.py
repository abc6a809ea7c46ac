"""The verifier's checks as pure functions: evidence in, a named result per step, a verdict out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from oauth3.attestation import (
    LAYOUT,
    Quote,
    app_facts,
    compare_with_quote,
    decode_mr_config_id,
    info_digest,
    parse_event_log,
    parse_quote,
)

from .collateral import collateral_window

# SHA-256 of the DER of Intel's SGX Provisioning Certification Root CA (a published fact)
INTEL_ROOT_CA_SHA256 = bytes.fromhex(
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)
DEFAULT_ALLOWED_TCB = frozenset({"UpToDate"})
SIMULATOR_MARKERS = ("simulat",)


class Step(StrEnum):
    """Step names, in the order they run and report."""

    QUOTE = "quote"
    SIMULATED = "simulated"
    HARDWARE = "hardware"
    TCB_POLICY = "tcb_policy"
    INFO_BINDING = "info_binding"
    NONCE = "nonce"
    EVENT_LOG = "event_log"
    COMPOSE = "compose"


class EvidenceStep(StrEnum):
    """Steps of a custom domain's TLS evidences (--evidences), run after the quote's steps."""

    EVIDENCE_FILES = "evidence_files"
    EVIDENCE_BINDING = "evidence_binding"
    TLS_CERTIFICATE = "tls_certificate"


StepName = Step | EvidenceStep


EXIT_VERIFIED = 0
EXIT_USAGE = 2
EXIT_CODES: Mapping[StepName, int] = {
    Step.QUOTE: 10,
    Step.HARDWARE: 11,
    Step.TCB_POLICY: 12,
    Step.INFO_BINDING: 13,
    Step.NONCE: 14,
    Step.EVENT_LOG: 15,
    Step.COMPOSE: 16,
    Step.SIMULATED: 17,
    EvidenceStep.EVIDENCE_FILES: 18,
    EvidenceStep.EVIDENCE_BINDING: 19,
    EvidenceStep.TLS_CERTIFICATE: 20,
}


class Outcome(StrEnum):
    """How a step ended; only PASS and FAIL carry a verdict, the others say why not."""

    PASS = "pass"  # noqa: S105 - an outcome name, not a password
    FAIL = "fail"
    SKIPPED = "skipped"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome, its one-line reason, and machine-readable details."""

    name: StepName
    outcome: Outcome
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        """True passed, False failed, None skipped or not applicable."""
        if self.outcome is Outcome.PASS:
            return True
        if self.outcome is Outcome.FAIL:
            return False
        return None

    def as_json(self) -> dict[str, Any]:
        """The stable JSON shape of a step."""
        return {
            "name": str(self.name),
            "ok": self.ok,
            "outcome": str(self.outcome),
            "reason": self.reason,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is verified: the quote, the event log and, for an oauth3 service, the /info bytes,
    the response's reportData/layout and the nonce sent (`bound=False` for a bare dstack quote)."""

    quote: bytes
    event_log: str | None
    bound: bool = False
    info: bytes | None = None
    declared_report_data: bytes | None = None
    layout: str | None = None
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """What the caller accepts: time, TCB statuses, expected identity, simulated quotes."""

    at: int
    allowed_tcb: frozenset[str] = DEFAULT_ALLOWED_TCB
    expect_compose_hash: bytes | None = None
    expect_app_id: bytes | None = None
    allow_simulated: bool = False
    root_ca_der: bytes | None = None
    skip_dcap: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """Every step's result and the overall verdict with its exit code."""

    steps: tuple[StepResult, ...]
    report_data: bytes | None
    compose_hash: bytes | None
    app_id: bytes | None
    tcb_status: str | None
    advisory_ids: tuple[str, ...]
    simulated: bool
    checked_at: int

    @property
    def first_failure(self) -> StepResult | None:
        """The first failing step (its exit code is the verdict's), or None."""
        return next((s for s in self.steps if s.outcome is Outcome.FAIL), None)

    @property
    def hardware_checked(self) -> bool:
        """False when --skip-dcap left the DCAP check out."""
        return any(s.name is Step.HARDWARE and s.outcome is Outcome.PASS for s in self.steps)

    @property
    def skipped(self) -> tuple[StepName, ...]:
        """The steps left unchecked (--skip-dcap, or no TLS handshake for saved evidences)."""
        return tuple(s.name for s in self.steps if s.outcome is Outcome.SKIPPED)

    @property
    def verdict(self) -> str:
        """FAILED, SIMULATED (allowed simulator quote), PARTIAL (a step skipped) or VERIFIED."""
        if self.first_failure is not None:
            return "FAILED"
        if self.simulated:
            return "SIMULATED"
        if not self.hardware_checked or self.skipped:
            return "PARTIAL"
        return "VERIFIED"

    @property
    def exit_code(self) -> int:
        """0 unless a step failed; then the first failing step's documented code."""
        failure = self.first_failure
        return EXIT_VERIFIED if failure is None else EXIT_CODES[failure.name]

    def as_json(self) -> dict[str, Any]:
        """The stable `--json` object."""
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "steps": [s.as_json() for s in self.steps],
            "report_data": hex_or_none(self.report_data),
            "compose_hash": hex_or_none(self.compose_hash),
            "app_id": hex_or_none(self.app_id),
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "simulated": self.simulated,
            "hardware_checked": self.hardware_checked,
            "checked_at": _rfc3339(self.checked_at),
        }


def hex_or_none(value: bytes | None) -> str | None:
    """Hex of the bytes, or None."""
    return value.hex() if value is not None else None


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Failed(Exception):
    """Raised inside a step to fail it with a reason and details."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


def _guarded(name: Step, check: Callable[[], StepResult]) -> StepResult:
    """Run one check; any exception at all is that step's failure, never a pass."""
    try:
        return check()
    except _Failed as exc:
        return StepResult(name, Outcome.FAIL, exc.reason, exc.details)
    except Exception as exc:
        return StepResult(name, Outcome.FAIL, f"{type(exc).__name__}: {_one_line(str(exc))}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class ChainFacts:
    """What the quote's PCK certificate chain says about its origin."""

    subjects: tuple[str, ...]
    last_sha256: bytes | None
    last_self_signed: bool
    names_simulator: bool

    @property
    def intel_rooted(self) -> bool:
        """True when the chain ends in Intel's SGX Root CA (by DER fingerprint)."""
        return self.last_sha256 == INTEL_ROOT_CA_SHA256


def chain_facts(quote: Quote) -> ChainFacts:
    """Read the PCK chain embedded in a quote; raises if it is absent or unparseable."""
    pems = quote.signature_data.pck_chain_pem()
    if not pems:
        raise _Failed("the quote carries no PCK certificate chain")
    certs = [x509.load_pem_x509_certificate(pem) for pem in pems]
    names = [c.subject.rfc4514_string() for c in certs] + [c.issuer.rfc4514_string() for c in certs]
    last = certs[-1]
    return ChainFacts(
        subjects=tuple(c.subject.rfc4514_string() for c in certs),
        last_sha256=hashlib.sha256(last.public_bytes(Encoding.DER)).digest(),
        last_self_signed=last.subject == last.issuer,
        names_simulator=any(m in n.lower() for n in names for m in SIMULATOR_MARKERS),
    )


def uses_pinned_root(chain: ChainFacts, policy: Policy) -> bool:
    """The pinned root (--root-ca) is used only for chains that do not end in Intel's root."""
    return policy.allow_simulated and policy.root_ca_der is not None and not chain.intel_rooted


def is_simulated(chain: ChainFacts, policy: Policy) -> bool:
    """A simulator quote: a certificate names itself one, the chain ends in a self-signed root
    that is not Intel's, or it can only be checked against a pinned root."""
    return (
        chain.names_simulator
        or (chain.last_self_signed and not chain.intel_rooted)
        or uses_pinned_root(chain, policy)
    )


@dataclass(slots=True)
class _State:
    """Facts one step hands to later ones."""

    quote: Quote | None = None
    chain: ChainFacts | None = None
    report: dcap_qvl.VerifiedReport | None = None
    events_ok: bool = False
    compose_hash: bytes | None = None
    app_id: bytes | None = None
    simulated: bool = False
    events: list[Any] = field(default_factory=list)


def _needs_quote(state: _State) -> Quote:
    if state.quote is None:
        raise _Failed("the quote did not parse")
    return state.quote


def _check_quote(evidence: Evidence, state: _State) -> StepResult:
    quote = parse_quote(evidence.quote)
    state.quote = quote
    return StepResult(
        Step.QUOTE,
        Outcome.PASS,
        f"TDX quote v{quote.header.version} parsed ({len(quote.raw)} bytes)",
        {"version": quote.header.version, "size": len(quote.raw), "debug": quote.report.debug},
    )


def _check_simulated(state: _State, policy: Policy) -> StepResult:
    chain = chain_facts(_needs_quote(state))
    state.chain = chain
    simulated = is_simulated(chain, policy)
    state.simulated = simulated
    details = {
        "chain": list(chain.subjects),
        "root_sha256": hex_or_none(chain.last_sha256),
        "intel_root": chain.intel_rooted,
        "names_simulator": chain.names_simulator,
    }
    if not simulated:
        where = "Intel's SGX Root CA" if chain.intel_rooted else "an issuer DCAP checks"
        return StepResult(Step.SIMULATED, Outcome.PASS, f"PCK chain ends in {where}", details)
    if policy.allow_simulated:
        return StepResult(
            Step.SIMULATED,
            Outcome.PASS,
            "SIMULATED quote (not Intel hardware), accepted because of --allow-simulated",
            details,
        )
    raise _Failed(
        "the quote comes from a simulator (its PCK chain does not end in Intel's SGX Root CA); "
        "pass --allow-simulated to accept it for testing",
        details,
    )


def _check_hardware(
    evidence: Evidence, state: _State, policy: Policy, collateral: dcap_qvl.QuoteCollateralV3 | None
) -> StepResult:
    if policy.skip_dcap:
        return StepResult(
            Step.HARDWARE,
            Outcome.SKIPPED,
            "NOT CHECKED (--skip-dcap): signature chain, TCB status and collateral unverified",
        )
    quote = _needs_quote(state)
    if collateral is None:
        raise _Failed("no collateral to verify the quote with")
    chain = state.chain if state.chain is not None else chain_facts(quote)
    details: dict[str, Any] = {"at": _rfc3339(policy.at)}
    try:
        details["collateral_window"] = collateral_window(collateral)
    except Exception as exc:
        details["collateral_window_error"] = _one_line(str(exc))
    pinned = policy.root_ca_der if uses_pinned_root(chain, policy) else None
    details["root"] = "pinned (--root-ca)" if pinned is not None else "Intel SGX Root CA"
    try:
        if pinned is not None:
            report = dcap_qvl.verify_with_root_ca(evidence.quote, collateral, pinned, policy.at)
        else:
            report = dcap_qvl.verify(evidence.quote, collateral, policy.at)
    except Exception as exc:
        reason = _one_line(str(exc)).removeprefix("Verification failed: ")
        raise _Failed(f"DCAP verification failed at {details['at']}: {reason}", details) from None
    state.report = report
    status = str(report.status)
    advisories = [str(a) for a in report.advisory_ids]
    details.update({"status": status, "advisory_ids": advisories})
    listed = ", ".join(advisories) if advisories else "no advisories"
    window = details.get("collateral_window", {})
    span = f"; collateral valid {window['valid_from']} .. {window['valid_until']}" if window else ""
    return StepResult(
        Step.HARDWARE,
        Outcome.PASS,
        f"DCAP signature chain OK, TCB {status}, {listed}{span}; checked at {details['at']}",
        details,
    )


def _check_tcb_policy(state: _State, policy: Policy) -> StepResult:
    allowed = sorted(policy.allowed_tcb)
    if policy.skip_dcap:
        return StepResult(
            Step.TCB_POLICY, Outcome.SKIPPED, "NOT CHECKED: no TCB status without the DCAP check"
        )
    if state.report is None:
        raise _Failed("no verified TCB status (the hardware step failed)", {"allowed": allowed})
    status = str(state.report.status)
    details = {"status": status, "allowed": allowed}
    if status not in policy.allowed_tcb:
        raise _Failed(
            f"TCB status {status} is not allowed (allowed: {', '.join(allowed)}; "
            "widen with --allow-tcb STATUS)",
            details,
        )
    return StepResult(Step.TCB_POLICY, Outcome.PASS, f"TCB status {status} is allowed", details)


def _check_info_binding(evidence: Evidence, state: _State) -> StepResult:
    if not evidence.bound:
        return StepResult(
            Step.INFO_BINDING, Outcome.NOT_APPLICABLE, "not applicable: a bare quote has no /info"
        )
    quote = _needs_quote(state)
    report_data = quote.report.report_data
    if evidence.info is None or evidence.declared_report_data is None:
        raise _Failed("the evidence lacks the /info bytes or the response's reportData")
    digest = info_digest(evidence.info)
    details = {
        "info_sha256": digest.hex(),
        "report_data_0_32": report_data[:32].hex(),
        "layout": evidence.layout,
    }
    if evidence.layout is not None and evidence.layout != LAYOUT:
        raise _Failed(f"response layout {evidence.layout!r} is not {LAYOUT!r}", details)
    if evidence.declared_report_data != report_data:
        raise _Failed("the response's reportData differs from the quote's report_data", details)
    if digest != report_data[:32]:
        raise _Failed(
            f"sha256(/info) {digest.hex()[:16]}… != report_data[0:32] "
            f"{report_data[:32].hex()[:16]}…: these /info bytes are not what the quote binds",
            details,
        )
    return StepResult(
        Step.INFO_BINDING,
        Outcome.PASS,
        f"sha256(/info) == report_data[0:32] ({digest.hex()[:16]}…)",
        details,
    )


def _check_nonce(evidence: Evidence, state: _State) -> StepResult:
    if not evidence.bound:
        return StepResult(
            Step.NONCE, Outcome.NOT_APPLICABLE, "not applicable: a bare quote has no nonce"
        )
    quote = _needs_quote(state)
    found = quote.report.report_data[32:]
    expected = evidence.nonce if evidence.nonce is not None else bytes(32)
    details = {"expected": expected.hex(), "found": found.hex()}
    if found != expected:
        what = "the nonce sent" if evidence.nonce is not None else "32 zero bytes (no nonce sent)"
        raise _Failed(
            f"report_data[32:64] {found.hex()[:16]}… is not {what}: a stale or replayed quote",
            details,
        )
    said = "the nonce sent" if evidence.nonce is not None else "zero (no nonce sent)"
    return StepResult(Step.NONCE, Outcome.PASS, f"report_data[32:64] is {said}", details)


def _check_event_log(evidence: Evidence, state: _State) -> StepResult:
    quote = _needs_quote(state)
    if evidence.event_log is None:
        raise _Failed("no event log: RTMR0-3 and the app identity cannot be checked")
    events = parse_event_log(evidence.event_log)
    replay = compare_with_quote(events, quote.report.rtmr)
    details = {
        "events": len(events),
        "replayed_rtmr": [r.hex() for r in replay.replayed],
        "mismatched": [f"RTMR{i}" for i in replay.mismatched],
    }
    if replay.mismatched:
        raise _Failed(f"event log does not replay: {replay.describe_mismatch()}", details)
    state.events = list(events)
    state.events_ok = True
    return StepResult(
        Step.EVENT_LOG,
        Outcome.PASS,
        f"RTMR0-3 replay from {len(events)} events; runtime digests recomputed",
        details,
    )


def _check_compose(state: _State, policy: Policy) -> StepResult:
    quote = _needs_quote(state)
    if not state.events_ok:
        raise _Failed("no replayed event log to read the compose hash from")
    facts = app_facts(state.events)
    if facts.compose_hash is None:
        raise _Failed("the event log has no compose-hash event before system-ready")
    state.compose_hash = facts.compose_hash
    state.app_id = facts.app_id
    details: dict[str, Any] = {
        "compose_hash": facts.compose_hash.hex(),
        "app_id": hex_or_none(facts.app_id),
        "instance_id": hex_or_none(facts.instance_id),
        "system_ready": facts.system_ready,
    }
    bound = decode_mr_config_id(quote.report.mr_config_id)
    details["mr_config_id_compose_hash"] = hex_or_none(bound)
    if bound is not None and bound != facts.compose_hash:
        raise _Failed(
            f"mr_config_id binds compose hash {bound.hex()[:16]}… but the event log measured "
            f"{facts.compose_hash.hex()[:16]}…",
            details,
        )
    if policy.expect_compose_hash is not None and policy.expect_compose_hash != facts.compose_hash:
        raise _Failed(
            f"compose hash {facts.compose_hash.hex()} != expected "
            f"{policy.expect_compose_hash.hex()}",
            details,
        )
    if policy.expect_app_id is not None and policy.expect_app_id != facts.app_id:
        raise _Failed(
            f"app id {hex_or_none(facts.app_id)} != expected {policy.expect_app_id.hex()}", details
        )
    checked = [
        what
        for what, done in (
            ("mr_config_id", bound is not None),
            ("--expect-compose-hash", policy.expect_compose_hash is not None),
            ("--expect-app-id", policy.expect_app_id is not None),
        )
        if done
    ]
    against = f", matches {', '.join(checked)}" if checked else " (no expectation given)"
    return StepResult(
        Step.COMPOSE,
        Outcome.PASS,
        f"compose hash {facts.compose_hash.hex()[:16]}…, "
        f"app id {hex_or_none(facts.app_id)}{against}",
        details,
    )


def verify_evidence(
    evidence: Evidence, policy: Policy, collateral: dcap_qvl.QuoteCollateralV3 | None
) -> Verdict:
    """Run every step in order (each fail-closed) and return the verdict; never raises."""
    state = _State()
    steps = [
        _guarded(Step.QUOTE, lambda: _check_quote(evidence, state)),
        _guarded(Step.SIMULATED, lambda: _check_simulated(state, policy)),
        _guarded(Step.HARDWARE, lambda: _check_hardware(evidence, state, policy, collateral)),
        _guarded(Step.TCB_POLICY, lambda: _check_tcb_policy(state, policy)),
        _guarded(Step.INFO_BINDING, lambda: _check_info_binding(evidence, state)),
        _guarded(Step.NONCE, lambda: _check_nonce(evidence, state)),
        _guarded(Step.EVENT_LOG, lambda: _check_event_log(evidence, state)),
        _guarded(Step.COMPOSE, lambda: _check_compose(state, policy)),
    ]
    report = state.report
    return Verdict(
        steps=tuple(steps),
        report_data=state.quote.report.report_data if state.quote is not None else None,
        compose_hash=state.compose_hash,
        app_id=state.app_id,
        tcb_status=str(report.status) if report is not None else None,
        advisory_ids=tuple(str(a) for a in report.advisory_ids) if report is not None else (),
        simulated=state.simulated,
        checked_at=policy.at,
    )
