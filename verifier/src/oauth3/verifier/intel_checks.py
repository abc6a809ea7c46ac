"""Intel's rules: the quote's format, whether it comes from a simulator, its DCAP signature chain
and collateral, and the TCB status the relying party accepts. These change when Intel's formats,
roots or TCB recoveries do."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import dcap_qvl
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from oauth3.attestation import Quote, parse_quote

from .collateral import collateral_window
from .step_basics import CheckState, Evidence, VerifyOptions, fail, needs_quote, one_line
from .verdict import Outcome, Step, StepResult, rfc3339

# SHA-256 of the DER of Intel's SGX Provisioning Certification Root CA (a published fact)
INTEL_ROOT_CA_SHA256 = bytes.fromhex(
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)


SIMULATOR_MARKERS = ("simulat",)


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


def check_quote(evidence: Evidence, state: CheckState) -> StepResult:
    quote = parse_quote(evidence.quote)
    state.quote = quote
    return StepResult(
        Step.QUOTE,
        Outcome.PASS,
        f"TDX quote v{quote.header.version} parsed ({len(quote.raw)} bytes)",
        {"version": quote.header.version, "size": len(quote.raw), "debug": quote.report.debug},
    )


def check_simulated(state: CheckState, options: VerifyOptions) -> StepResult:
    chain = chain_facts(needs_quote(state))
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


def check_hardware(
    evidence: Evidence,
    state: CheckState,
    options: VerifyOptions,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
) -> StepResult:
    if options.skip_dcap:
        return StepResult(
            Step.HARDWARE,
            Outcome.SKIPPED,
            "NOT CHECKED (--skip-dcap): signature chain, TCB status and collateral unverified",
        )
    quote = needs_quote(state)
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


def check_tcb_policy(
    state: CheckState, options: VerifyOptions, collateral: dcap_qvl.QuoteCollateralV3 | None
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
