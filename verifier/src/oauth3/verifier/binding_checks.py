"""oauth3's own bindings: the /info bytes in report_data[0:32], and in report_data[32:64] the
nonce (oauth3/v1) or the Merkle root of the batch the nonce is a leaf of (oauth3/v2). These change
when oauth3's protocol does."""

from __future__ import annotations

from typing import Any

from oauth3.attestation import LAYOUT_V2, LAYOUTS, info_digest
from oauth3.attestation.errors import ResponseError
from oauth3.attestation.merkle import MerkleError, root_from_path
from oauth3.attestation.response import BatchProof, read_batch_proof

from .step_basics import CheckState, Evidence, fail, needs_quote
from .verdict import Outcome, Step, StepResult, rfc3339


def check_info_binding(evidence: Evidence, state: CheckState) -> StepResult:
    if not evidence.bound:
        return StepResult(
            Step.INFO_BINDING, Outcome.NOT_APPLICABLE, "not applicable: a bare quote has no /info"
        )
    quote = needs_quote(state)
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


def read_proof(document: object) -> BatchProof:
    """The `merkle` member of an oauth3/v2 response, read by attestation.response; a step
    failure naming what is malformed (where read_response would refuse the document)."""
    try:
        return read_batch_proof(document)
    except ResponseError as exc:
        raise fail(f"the inclusion proof is malformed: {exc}") from None


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


def check_nonce(evidence: Evidence, state: CheckState) -> StepResult:
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
    found = needs_quote(state).report.report_data[32:]
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
