"""What every check shares: the evidence and options it reads, the facts one step hands to the
next, and the rule that any exception inside a step is that step's failure, never a pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from oauth3.attestation import Quote

from .policy import Policy
from .verdict import Outcome, StepName, StepResult

if TYPE_CHECKING:
    import dcap_qvl

    from .event_log_checks import LogReading
    from .intel_checks import ChainFacts

Origin = Literal["online", "bundle", "quote_file", "evidences"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is verified. `origin` says how it was obtained, which decides what freshness can
    mean: `online` (fetched now, with the nonce this run drew), `bundle` (saved earlier),
    `quote_file` (a bare dstack quote) or `evidences` (a custom domain's files)."""

    quote: bytes
    event_log: str | None
    origin: Origin = "quote_file"
    vm_config: str | None = None
    info: bytes | None = None
    declared_report_data: bytes | None = None
    layout: str | None = None
    nonce: bytes | None = None
    fetched_at: int | None = None
    merkle: object = None  # the response's inclusion proof (oauth3/v2), as received

    @property
    def bound(self) -> bool:
        """True for an oauth3 service's evidence: /info bytes and a reportData to bind."""
        return self.origin in ("online", "bundle")


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """How to check: at what time, against which policy, and what the caller allows."""

    at: int
    policy: Policy = field(default_factory=Policy)
    allow_simulated: bool = False
    root_ca_der: bytes | None = None
    skip_dcap: bool = False


class _Failed(Exception):
    """Raised inside a step to fail it with a reason and details."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


def guarded(name: StepName, check: Callable[[], StepResult]) -> StepResult:
    """Run one check; any exception at all is that step's failure, never a pass."""
    try:
        return check()
    except _Failed as exc:
        return StepResult(name, Outcome.FAIL, exc.reason, exc.details)
    except Exception as exc:
        return StepResult(name, Outcome.FAIL, f"{type(exc).__name__}: {one_line(str(exc))}")


def fail(reason: str, details: dict[str, Any] | None = None) -> _Failed:
    """The exception that fails the running step with `reason`."""
    return _Failed(reason, details)


def one_line(text: str) -> str:
    """Collapse whitespace (including newlines) to single spaces."""
    return " ".join(text.split())


@dataclass(slots=True)
class CheckState:
    """Facts one step hands to later ones."""

    quote: Quote | None = None
    chain: ChainFacts | None = None
    report: dcap_qvl.VerifiedReport | None = None
    verified_root: bytes | None = None  # SHA-256 of the root DCAP checked the quote against
    simulated: bool = False
    log: LogReading | None = None


def needs_quote(state: CheckState) -> Quote:
    if state.quote is None:
        raise fail("the quote did not parse")
    return state.quote
