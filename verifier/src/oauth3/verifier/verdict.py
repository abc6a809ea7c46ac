"""The verifier's result model: named steps with outcomes, and one verdict with one exit code.

A verdict is the worst thing any step says. Only a complete, pinned check exits 0; everything
else (a failure, a skipped check, an expectation nobody gave, freshness nobody proved) has its own
verdict name and exit code, so a script can never mistake "consistent" for "verified".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Step(StrEnum):
    """The quote's steps, in the order they run and report."""

    QUOTE = "quote"
    SIMULATED = "simulated"
    HARDWARE = "hardware"
    TCB_POLICY = "tcb_policy"
    PLATFORM = "platform"
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


class Outcome(StrEnum):
    """How a step ended. Only PASS is a full check; the three gaps each lower the verdict."""

    PASS = "pass"  # noqa: S105 - an outcome name, not a password
    FAIL = "fail"
    SKIPPED = "skipped"  # the check was not made (--skip-dcap, no TLS handshake)
    UNPINNED = "unpinned"  # consistent, but compared with no value the relying party gave
    NOT_FRESH = "not_fresh"  # nothing proves the quote was made for this check
    NOT_APPLICABLE = "not_applicable"  # nothing to check for this kind of evidence


class VerdictName(StrEnum):
    """The overall verdicts, worst first in `verdict_of`."""

    VERIFIED = "VERIFIED"
    SIMULATED = "SIMULATED"
    FAILED = "FAILED"
    PARTIAL = "PARTIAL"
    UNPINNED = "UNPINNED"
    NOT_FRESH = "NOT_FRESH"


EXIT_VERIFIED = 0
EXIT_USAGE = 2
EXIT_UNPINNED = 3
EXIT_PARTIAL = 4
EXIT_NOT_FRESH = 5
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
    Step.PLATFORM: 21,
}
GAP_VERDICTS: tuple[tuple[Outcome, VerdictName, int], ...] = (
    (Outcome.UNPINNED, VerdictName.UNPINNED, EXIT_UNPINNED),
    (Outcome.SKIPPED, VerdictName.PARTIAL, EXIT_PARTIAL),
    (Outcome.NOT_FRESH, VerdictName.NOT_FRESH, EXIT_NOT_FRESH),
)
VERDICT_MEANINGS: Mapping[VerdictName, str] = {
    VerdictName.VERIFIED: "every link was checked and matched what you pinned",
    VerdictName.SIMULATED: (
        "every link was checked and matched what you pinned, on a simulator quote (not Intel "
        "hardware) accepted because of --allow-simulated and a pinned mock root"
    ),
    VerdictName.FAILED: "a check failed; the exit code names the first failing step",
    VerdictName.PARTIAL: "a check was skipped, so nothing is proven",
    VerdictName.UNPINNED: (
        "the evidence is consistent, but nothing you gave pins the app or the platform: "
        "any CVM could have produced it"
    ),
    VerdictName.NOT_FRESH: (
        "checked and pinned, but nothing proves the quote was made now: it may be a replay"
    ),
}


def rfc3339(seconds: int) -> str:
    """Unix seconds as an RFC 3339 UTC timestamp with a Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hex_or_none(value: bytes | None) -> str | None:
    """Hex of the bytes, or None."""
    return value.hex() if value is not None else None


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome, its one-line reason, and machine-readable details."""

    name: StepName
    outcome: Outcome
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        """True passed fully, False failed, None for every other outcome."""
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
class Verdict:
    """Every step's result, the facts worth showing, and the verdict with its exit code."""

    steps: tuple[StepResult, ...]
    checked_at: int
    simulated: bool = False
    report_data: bytes | None = None
    compose_hash: bytes | None = None
    app_id: bytes | None = None
    key_provider: bytes | None = None  # the measured key-provider payload
    instance_id: bytes | None = None  # which replica of the app answered (None: no instance id)
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    measurements: dict[str, str] = field(default_factory=dict)
    root_ca_sha256: bytes | None = None  # the root DCAP verified against (None: not checked)
    evidence: dict[str, Any] = field(default_factory=dict)
    collateral: dict[str, Any] | None = None

    @property
    def first_failure(self) -> StepResult | None:
        """The first failing step (its exit code is the verdict's), or None."""
        return next((s for s in self.steps if s.outcome is Outcome.FAIL), None)

    @property
    def hardware_checked(self) -> bool:
        """True only when the DCAP check ran and passed."""
        return any(s.name is Step.HARDWARE and s.outcome is Outcome.PASS for s in self.steps)

    def with_outcome(self, outcome: Outcome) -> tuple[StepResult, ...]:
        """The steps that ended with `outcome`."""
        return tuple(s for s in self.steps if s.outcome is outcome)

    @property
    def verdict(self) -> VerdictName:
        """FAILED, then UNPINNED, PARTIAL, NOT_FRESH (the first gap found, in that order),
        then SIMULATED or VERIFIED."""
        return self._verdict_and_code()[0]

    @property
    def exit_code(self) -> int:
        """0 for VERIFIED and SIMULATED; the failing step's code; 3, 4 or 5 for the gaps."""
        return self._verdict_and_code()[1]

    def _verdict_and_code(self) -> tuple[VerdictName, int]:
        failure = self.first_failure
        if failure is not None:
            return VerdictName.FAILED, EXIT_CODES[failure.name]
        for outcome, name, code in GAP_VERDICTS:
            if self.with_outcome(outcome):
                return name, code
        if not self.hardware_checked:  # defensive: a verdict of 0 needs the DCAP pass
            return VerdictName.PARTIAL, EXIT_PARTIAL
        if self.simulated:
            return VerdictName.SIMULATED, EXIT_VERIFIED
        return VerdictName.VERIFIED, EXIT_VERIFIED

    @property
    def gaps(self) -> list[str]:
        """One line per step that passed with a gap: what is missing and where."""
        return [
            f"{s.name}: {s.reason}"
            for outcome, _, _ in GAP_VERDICTS
            for s in self.with_outcome(outcome)
        ]

    def as_json(self) -> dict[str, Any]:
        """The stable `--json` object."""
        verdict = self.verdict
        return {
            "verdict": str(verdict),
            "exit_code": self.exit_code,
            "meaning": VERDICT_MEANINGS[verdict],
            "gaps": self.gaps,
            "steps": [s.as_json() for s in self.steps],
            "report_data": hex_or_none(self.report_data),
            "compose_hash": hex_or_none(self.compose_hash),
            "app_id": hex_or_none(self.app_id),
            "key_provider": (
                self.key_provider.decode("utf-8", "replace")
                if self.key_provider is not None
                else None
            ),
            "instance_id": hex_or_none(self.instance_id),
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "simulated": self.simulated,
            "hardware_checked": self.hardware_checked,
            "checked_at": rfc3339(self.checked_at),
            "measurements": self.measurements,
            "root_ca_sha256": hex_or_none(self.root_ca_sha256),
            "evidence": self.evidence,
            "collateral": self.collateral,
        }
