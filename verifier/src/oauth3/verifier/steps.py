"""The verifier's checks as pure functions: evidence in, a named result per step, a verdict out.

Each step checks one link of the chain of trust (see the README, "What VERIFIED means"). A step
passes only when it checked its link completely against values the relying party gave; a link
that holds but was compared with nothing ends UNPINNED, an unproven freshness NOT_FRESH, a check
not made SKIPPED. Any exception inside a step is that step's failure, never a pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import dcap_qvl
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from oauth3.attestation import (
    LAYOUT_V2,
    LAYOUTS,
    Event,
    Quote,
    TdReport,
    compare_with_quote,
    decode_mr_config_id,
    info_digest,
    parse_event_log,
    parse_quote,
)
from oauth3.attestation.merkle import HASH_SIZE, MerkleError, root_from_path
from oauth3.attestation.rtmr3 import BootRecord, read_boot_record

from .collateral import collateral_window
from .os_release import ReleaseMismatch, check_release_pins, recompute
from .platform import (
    OsIdentity,
    PlatformMismatch,
    check_os,
    identify_os,
    measurements,
    parse_vm_config,
    vouched_by,
)
from .policy import PlatformPin, Policy, measured_key_provider
from .verdict import (
    EvidenceStep,
    Outcome,
    Step,
    StepName,
    StepResult,
    Verdict,
    hex_or_none,
    rfc3339,
)

# SHA-256 of the DER of Intel's SGX Provisioning Certification Root CA (a published fact)
INTEL_ROOT_CA_SHA256 = bytes.fromhex(
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)
SIMULATOR_MARKERS = ("simulat",)
Origin = Literal["online", "bundle", "quote_file", "evidences"]

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
    "verify_evidence",
]


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


@dataclass(frozen=True, slots=True)
class ChainFacts:
    """What the quote's PCK certificate chain says about its origin."""

    subjects: tuple[str, ...]
    last_der: bytes
    last_self_signed: bool
    names_simulator: bool

    @property
    def last_sha256(self) -> bytes:
        """SHA-256 of the chain's last certificate (its root, when the chain is complete)."""
        return hashlib.sha256(self.last_der).digest()

    @property
    def intel_rooted(self) -> bool:
        """True when the chain ends in Intel's SGX Root CA (by DER fingerprint)."""
        return self.last_sha256 == INTEL_ROOT_CA_SHA256


def chain_facts(quote: Quote) -> ChainFacts:
    """Read the PCK chain embedded in a quote; raises if it is absent or unparseable."""
    pems = quote.signature_data.pck_chain_pem()
    if not pems:
        raise fail("the quote carries no PCK certificate chain")
    certs = [x509.load_pem_x509_certificate(pem) for pem in pems]
    names = [c.subject.rfc4514_string() for c in certs] + [c.issuer.rfc4514_string() for c in certs]
    last = certs[-1]
    return ChainFacts(
        subjects=tuple(c.subject.rfc4514_string() for c in certs),
        last_der=last.public_bytes(Encoding.DER),
        last_self_signed=last.subject == last.issuer,
        names_simulator=any(m in n.lower() for n in names for m in SIMULATOR_MARKERS),
    )


def pinned_root(chain: ChainFacts, options: VerifyOptions) -> tuple[bytes, str] | None:
    """The mock root to check a simulator quote against, and who pinned it: only with
    --allow-simulated, never for a chain that ends in Intel's root."""
    if not options.allow_simulated or chain.intel_rooted:
        return None
    if options.root_ca_der is not None:
        return options.root_ca_der, "--root-ca"
    pin = options.policy.simulated_root_sha256
    if pin is not None and chain.last_self_signed and chain.last_sha256 == pin:
        return chain.last_der, f"root_ca_sha256 in {options.policy.source}"
    return None


def is_simulated(chain: ChainFacts, options: VerifyOptions) -> bool:
    """A simulator quote: a certificate names itself one, the chain ends in a self-signed root
    that is not Intel's, or it can only be checked against a pinned root."""
    return (
        chain.names_simulator
        or (chain.last_self_signed and not chain.intel_rooted)
        or pinned_root(chain, options) is not None
    )


@dataclass(frozen=True, slots=True)
class LogReading:
    """The event log replayed against the quote and read under dstack's RTMR3 rules, once."""

    events: tuple[Event, ...] = ()
    replayed: tuple[bytes, ...] = ()
    mismatched: tuple[str, ...] = ()
    boot: BootRecord | None = None
    error: str | None = None


def read_log(evidence: Evidence, quote: Quote) -> LogReading:
    """Replay RTMR0-3 and read RTMR3; the error (if any) says why neither can be trusted."""
    if evidence.event_log is None:
        return LogReading(error="no event log: RTMR0-3 and the app identity cannot be checked")
    try:
        events = tuple(parse_event_log(evidence.event_log))
        replay = compare_with_quote(events, quote.report.rtmr)
    except Exception as exc:
        return LogReading(error=one_line(str(exc)))
    if replay.mismatched:
        return LogReading(
            events,
            replay.replayed,
            tuple(f"RTMR{i}" for i in replay.mismatched),
            error=f"event log does not replay: {replay.describe_mismatch()}",
        )
    try:
        boot = read_boot_record(events)
    except Exception as exc:
        return LogReading(events, replay.replayed, error=one_line(str(exc)))
    return LogReading(events, replay.replayed, boot=boot)


@dataclass(slots=True)
class _State:
    """Facts one step hands to later ones."""

    quote: Quote | None = None
    chain: ChainFacts | None = None
    report: dcap_qvl.VerifiedReport | None = None
    verified_root: bytes | None = None  # SHA-256 of the root DCAP checked the quote against
    simulated: bool = False
    log: LogReading | None = None


def _needs_quote(state: _State) -> Quote:
    if state.quote is None:
        raise fail("the quote did not parse")
    return state.quote


def _log(evidence: Evidence, state: _State) -> LogReading:
    if state.log is None:
        state.log = read_log(evidence, _needs_quote(state))
    return state.log


def _check_quote(evidence: Evidence, state: _State) -> StepResult:
    quote = parse_quote(evidence.quote)
    state.quote = quote
    return StepResult(
        Step.QUOTE,
        Outcome.PASS,
        f"TDX quote v{quote.header.version} parsed ({len(quote.raw)} bytes)",
        {"version": quote.header.version, "size": len(quote.raw), "debug": quote.report.debug},
    )


def _check_simulated(state: _State, options: VerifyOptions) -> StepResult:
    chain = chain_facts(_needs_quote(state))
    state.chain = chain
    simulated = is_simulated(chain, options)
    state.simulated = simulated
    details = {
        "chain": list(chain.subjects),
        "last_certificate_sha256": chain.last_sha256.hex(),  # the quote's word, unsigned
        "intel_root": chain.intel_rooted,
        "names_simulator": chain.names_simulator,
    }
    if not simulated:
        where = "Intel's SGX Root CA" if chain.intel_rooted else "an issuer DCAP checks"
        return StepResult(Step.SIMULATED, Outcome.PASS, f"PCK chain ends in {where}", details)
    if not options.allow_simulated:
        raise fail(
            "the quote comes from a simulator (its PCK chain does not end in Intel's SGX Root "
            "CA); pass --allow-simulated to accept it for testing",
            details,
        )
    return StepResult(
        Step.SIMULATED,
        Outcome.PASS,
        "SIMULATED quote (not Intel hardware), accepted because of --allow-simulated",
        details,
    )


def _check_hardware(
    evidence: Evidence,
    state: _State,
    options: VerifyOptions,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
) -> StepResult:
    if options.skip_dcap:
        return StepResult(
            Step.HARDWARE,
            Outcome.SKIPPED,
            "NOT CHECKED (--skip-dcap): signature chain, TCB status and collateral unverified",
        )
    quote = _needs_quote(state)
    if collateral is None:
        raise fail("no collateral to verify the quote with")
    chain = state.chain if state.chain is not None else chain_facts(quote)
    details: dict[str, Any] = {"at": rfc3339(options.at)}
    try:
        details["collateral_window"] = collateral_window(collateral)
    except Exception as exc:
        details["collateral_window_error"] = one_line(str(exc))
    pinned = pinned_root(chain, options)
    details["root"] = f"pinned mock root ({pinned[1]})" if pinned else "Intel SGX Root CA"
    try:
        if pinned is not None:
            report = dcap_qvl.verify_with_root_ca(evidence.quote, collateral, pinned[0], options.at)
        else:
            report = dcap_qvl.verify(evidence.quote, collateral, options.at)
    except Exception as exc:
        reason = one_line(str(exc)).removeprefix("Verification failed: ")
        hint = (
            " (collateral outside its validity window: fetch current collateral with --pccs, "
            "or check as of another time with --at)"
            if "expired" in reason.lower() or "not yet valid" in reason.lower()
            else ""
        )
        raise fail(
            f"DCAP verification failed at {details['at']}: {reason}{hint}", details
        ) from None
    state.report = report
    # the root that vouched, never the chain's last certificate: the chain is not signed, and
    # anything may be appended to it
    state.verified_root = (
        hashlib.sha256(pinned[0]).digest() if pinned is not None else INTEL_ROOT_CA_SHA256
    )
    status = str(report.status)
    advisories = [str(a) for a in report.advisory_ids]
    details.update({"status": status, "advisory_ids": advisories})
    listed = ", ".join(advisories) if advisories else "no advisories"
    window = details.get("collateral_window", {})
    span = f"; collateral valid {window['valid_from']} .. {window['valid_until']}" if window else ""
    return StepResult(
        Step.HARDWARE,
        Outcome.PASS,
        f"DCAP signature chain OK ({details['root']}), TCB {status}, {listed}{span}; "
        f"checked at {details['at']}",
        details,
    )


def evaluation_number(signed_json: str) -> int | None:
    """The tcbEvaluationDataNumber of a TCB info or QE identity document (None if unreadable)."""
    try:
        number = orjson.loads(signed_json).get("tcbEvaluationDataNumber")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def _check_tcb_policy(
    state: _State, options: VerifyOptions, collateral: dcap_qvl.QuoteCollateralV3 | None
) -> StepResult:
    policy = options.policy
    allowed = sorted(policy.allowed_tcb)
    if options.skip_dcap:
        return StepResult(
            Step.TCB_POLICY, Outcome.SKIPPED, "NOT CHECKED: no TCB status without the DCAP check"
        )
    if state.report is None:
        raise fail("no verified TCB status (the hardware step failed)", {"allowed": allowed})
    status = str(state.report.status)
    advisories = sorted(str(a) for a in state.report.advisory_ids)
    refused = [a for a in advisories if a not in policy.allowed_advisories]
    evaluation = evaluation_number(collateral.tcb_info) if collateral is not None else None
    qe_evaluation = evaluation_number(collateral.qe_identity) if collateral is not None else None
    details = {
        "status": status,
        "allowed": allowed,
        "advisory_ids": advisories,
        "allowed_advisories": sorted(policy.allowed_advisories),
        "tcb_evaluation_data_number": evaluation,
        "qe_identity_tcb_evaluation_data_number": qe_evaluation,
        "min_tcb_evaluation": policy.min_tcb_evaluation,
    }
    if status not in policy.allowed_tcb:
        raise fail(
            f"TCB status {status} is not allowed (allowed: {', '.join(allowed)}; "
            "widen with --allow-tcb STATUS or the policy's [tcb] allowed_statuses)",
            details,
        )
    if refused:
        raise fail(
            f"advisories {', '.join(refused)} are not accepted (accept each with "
            "--allow-advisory ID or the policy's [tcb] allowed_advisories)",
            details,
        )
    minimum = policy.min_tcb_evaluation
    # both signed documents: an old QE identity would accept a QE an Intel recovery retired
    for document, number in (("TCB info", evaluation), ("QE identity", qe_evaluation)):
        if minimum is not None and (number is None or number < minimum):
            raise fail(
                f"the collateral's {document} comes from TCB evaluation {number}, older than "
                f"the minimum {minimum} you set: fetch current collateral (--pccs)",
                details,
            )
    listed = f", advisories {', '.join(advisories)} accepted" if advisories else ", no advisories"
    return StepResult(
        Step.TCB_POLICY, Outcome.PASS, f"TCB status {status} is allowed{listed}", details
    )


def _check_platform(evidence: Evidence, state: _State, options: VerifyOptions) -> StepResult:
    report = _needs_quote(state).report
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
    log = _log(evidence, state)
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


def _check_info_binding(evidence: Evidence, state: _State) -> StepResult:
    if not evidence.bound:
        return StepResult(
            Step.INFO_BINDING, Outcome.NOT_APPLICABLE, "not applicable: a bare quote has no /info"
        )
    quote = _needs_quote(state)
    report_data = quote.report.report_data
    if evidence.info is None or evidence.declared_report_data is None:
        raise fail("the evidence lacks the /info bytes or the response's reportData")
    digest = info_digest(evidence.info)
    details = {
        "info_sha256": digest.hex(),
        "report_data_0_32": report_data[:32].hex(),
        "layout": evidence.layout,
    }
    if evidence.layout not in LAYOUTS:
        raise fail(f"response layout {evidence.layout!r} is none of {', '.join(LAYOUTS)}", details)
    if evidence.declared_report_data != report_data:
        raise fail("the response's reportData differs from the quote's report_data", details)
    if digest != report_data[:32]:
        raise fail(
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


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """An oauth3/v2 response's proof that a nonce is a leaf of the quoted batch."""

    leaf_index: int
    batch_size: int
    path: tuple[bytes, ...]


def read_proof(document: object) -> InclusionProof:
    """The `merkle` member of an oauth3/v2 response; a _Failed naming what is malformed."""
    if not isinstance(document, dict):
        raise fail("an oauth3/v2 response must carry its inclusion proof ('merkle')")
    index, size, path = document.get("leafIndex"), document.get("batchSize"), document.get("path")
    if type(index) is not int or type(size) is not int:  # bool is an int subclass: refuse it
        raise fail("the inclusion proof's leafIndex and batchSize must be integers")
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise fail("the inclusion proof's path must be a list of hex strings")
    try:
        siblings = tuple(bytes.fromhex(p) for p in path)
    except ValueError:
        raise fail("the inclusion proof's path is not hex") from None
    if any(len(s) != HASH_SIZE for s in siblings):
        raise fail(f"every hash of the inclusion proof's path must be {HASH_SIZE} bytes")
    return InclusionProof(index, size, siblings)


def _nonce_binding(evidence: Evidence, found: bytes, details: dict[str, Any]) -> str:
    """Check report_data[32:64] against the nonce (v1: equal; v2: the batch root it leads to);
    return how it is bound, or raise naming the mismatch."""
    expected = evidence.nonce if evidence.nonce is not None else bytes(32)
    recorded = (
        "the nonce recorded in the bundle" if evidence.origin == "bundle" else "the nonce sent"
    )
    what = recorded if evidence.nonce is not None else "32 zero bytes (no nonce)"
    if evidence.layout != LAYOUT_V2:
        details["expected"] = expected.hex()
        if found != expected:
            raise fail(
                f"report_data[32:64] {found.hex()[:16]}… is not {what}: a stale or replayed quote",
                details,
            )
        return f"report_data[32:64] is {what}"
    if evidence.nonce is None:
        raise fail("an oauth3/v2 answer to a request without a nonce", details)
    proof = read_proof(evidence.merkle)
    details.update(leaf_index=proof.leaf_index, batch_size=proof.batch_size)
    try:
        root = root_from_path(evidence.nonce, proof.leaf_index, proof.batch_size, proof.path)
    except MerkleError as exc:
        raise fail(f"the inclusion proof of {what} is malformed: {exc}", details) from None
    details["root"] = root.hex()
    if root != found:
        raise fail(
            f"{what} at leaf {proof.leaf_index} of {proof.batch_size} leads to root "
            f"{root.hex()[:16]}…, not report_data[32:64] {found.hex()[:16]}…: not this quote's "
            "batch",
            details,
        )
    return (
        f"{what} is leaf {proof.leaf_index} of the {proof.batch_size}-nonce batch whose Merkle "
        "root is report_data[32:64]"
    )


def _check_nonce(evidence: Evidence, state: _State) -> StepResult:
    if evidence.origin == "evidences":
        return StepResult(
            Step.NONCE,
            Outcome.NOT_APPLICABLE,
            "not applicable: freshness comes from the live TLS handshake (tls_certificate)",
        )
    if not evidence.bound:
        return StepResult(
            Step.NONCE,
            Outcome.NOT_FRESH,
            "a bare quote carries no nonce of yours: freshness is not established",
        )
    found = _needs_quote(state).report.report_data[32:]
    details: dict[str, Any] = {
        "found": found.hex(),
        "origin": evidence.origin,
        "layout": evidence.layout,
    }
    bound = _nonce_binding(evidence, found, details)
    if evidence.origin == "bundle":
        fetched = rfc3339(evidence.fetched_at) if evidence.fetched_at is not None else "unknown"
        return StepResult(
            Step.NONCE,
            Outcome.NOT_FRESH,
            f"{bound}, but offline freshness is not established (the bundle says it was "
            f"fetched at {fetched}; nothing proves it)",
            details,
        )
    if evidence.nonce is None:
        return StepResult(
            Step.NONCE,
            Outcome.NOT_FRESH,
            "no nonce was sent (--nonce none): the cached quote may be a replay",
            details,
        )
    return StepResult(Step.NONCE, Outcome.PASS, bound, details)


def _event_summary(events: tuple[Event, ...]) -> list[dict[str, Any]]:
    return [{"event": e.event, "payload": e.event_payload.hex()} for e in events]


def _check_event_log(evidence: Evidence, state: _State) -> StepResult:
    log = _log(evidence, state)
    details: dict[str, Any] = {
        "events": len(log.events),
        "replayed_rtmr": [r.hex() for r in log.replayed],
        "mismatched": list(log.mismatched),
    }
    if log.boot is None:
        raise fail(log.error or "the event log was not read", details)
    boot = log.boot
    details["os_events"] = boot.names
    details["app_events"] = _event_summary(boot.app_events)
    later = ""
    if boot.app_events:
        names = ", ".join(repr(e.event) for e in boot.app_events[:5])
        more = f" (+{len(boot.app_events) - 5} more)" if len(boot.app_events) > 5 else ""
        count = len(boot.app_events)
        later = f"; {count} app event(s) after boot, never read as OS facts: {names}{more}"
    return StepResult(
        Step.EVENT_LOG,
        Outcome.PASS,
        f"RTMR0-3 replay from {len(log.events)} events; RTMR3 holds dstack's OS events in order "
        f"({len(boot.os_events)}, ending with system-ready){later}",
        details,
    )


def _check_compose(evidence: Evidence, state: _State, options: VerifyOptions) -> StepResult:
    quote = _needs_quote(state)
    log = _log(evidence, state)
    if log.boot is None:
        raise fail("no event log read under dstack's rules to take the compose hash from")
    boot = log.boot
    policy = options.policy
    details: dict[str, Any] = {
        "compose_hash": boot.compose_hash.hex(),
        "app_id": boot.app_id.hex(),
        "instance_id": hex_or_none(boot.instance_id),
        "key_provider": boot.key_provider,
        "allowed_compose_hashes": sorted(h.hex() for h in policy.compose_hashes),
    }
    bound = decode_mr_config_id(quote.report.mr_config_id)
    details["mr_config_id_compose_hash"] = hex_or_none(bound)
    if bound is not None and bound != boot.compose_hash:
        raise fail(
            f"mr_config_id binds compose hash {bound.hex()[:16]}… but the OS measured "
            f"{boot.compose_hash.hex()[:16]}…",
            details,
        )
    if policy.compose_hashes and boot.compose_hash not in policy.compose_hashes:
        raise fail(
            f"compose hash {boot.compose_hash.hex()} is not one you pinned ({policy.source})",
            details,
        )
    if policy.app_ids and boot.app_id not in policy.app_ids:
        raise fail(f"app id {boot.app_id.hex()} is not one you pinned ({policy.source})", details)
    provider = measured_key_provider(boot.key_provider_payload)
    if policy.key_providers and provider not in policy.key_providers:
        shown = str(provider) if provider is not None else "one that is not dstack's serialisation"
        raise fail(
            f"key provider {shown} is not one you pinned ({policy.source}): the app's keys "
            "come from elsewhere",
            details,
        )
    said = f"compose hash {boot.compose_hash.hex()[:16]}…, app id {boot.app_id.hex()}"
    if bound is not None:
        said += ", agrees with mr_config_id"
    if not policy.compose_hashes:
        return StepResult(
            Step.COMPOSE,
            Outcome.UNPINNED,
            f"{said}; nothing pins the compose hash (give --expect-compose-hash or --policy)",
            details,
        )
    app = ", app id pinned" if policy.app_ids else ""
    app += ", key provider pinned" if policy.key_providers else ""
    return StepResult(Step.COMPOSE, Outcome.PASS, f"{said}; pinned ({policy.source}){app}", details)


def collateral_identity(quote: bytes, collateral: dcap_qvl.QuoteCollateralV3) -> dict[str, Any]:
    """Hashes naming the exact collateral a check used, so anyone can repeat it."""

    def sha(data: bytes | str) -> str:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return hashlib.sha256(raw).hexdigest()

    return {
        "quote_sha256": sha(quote),
        "tcb_info_sha256": sha(collateral.tcb_info),
        "qe_identity_sha256": sha(collateral.qe_identity),
        "pck_crl_sha256": sha(bytes(collateral.pck_crl)),
        "root_ca_crl_sha256": sha(bytes(collateral.root_ca_crl)),
        "tcb_evaluation_data_number": evaluation_number(collateral.tcb_info),
        "qe_identity_tcb_evaluation_data_number": evaluation_number(collateral.qe_identity),
    }


def _evidence_facts(evidence: Evidence) -> dict[str, Any]:
    facts: dict[str, Any] = {"origin": evidence.origin}
    if evidence.fetched_at is not None:
        facts["fetched_at"] = rfc3339(evidence.fetched_at)
        facts["fetched_at_source"] = (
            "the bundle's own claim, unproven" if evidence.origin == "bundle" else "this run"
        )
    return facts


def verify_evidence(
    evidence: Evidence, options: VerifyOptions, collateral: dcap_qvl.QuoteCollateralV3 | None
) -> Verdict:
    """Run every step in order (each fail-closed) and return the verdict; never raises."""
    state = _State()
    steps = [
        guarded(Step.QUOTE, lambda: _check_quote(evidence, state)),
        guarded(Step.SIMULATED, lambda: _check_simulated(state, options)),
        guarded(Step.HARDWARE, lambda: _check_hardware(evidence, state, options, collateral)),
        guarded(Step.TCB_POLICY, lambda: _check_tcb_policy(state, options, collateral)),
        guarded(Step.PLATFORM, lambda: _check_platform(evidence, state, options)),
        guarded(Step.INFO_BINDING, lambda: _check_info_binding(evidence, state)),
        guarded(Step.NONCE, lambda: _check_nonce(evidence, state)),
        guarded(Step.EVENT_LOG, lambda: _check_event_log(evidence, state)),
        guarded(Step.COMPOSE, lambda: _check_compose(evidence, state, options)),
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
