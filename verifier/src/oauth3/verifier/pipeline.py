"""From a URL, a bundle or a quote to a verdict: fetch the exact /info bytes and a fresh
/attestation when asked to, obtain the collateral, then run the steps.

The HTTP client and the PCCS client load only on the paths that go online: a saved bundle with
its collateral, or any input with --collateral, is checked without them (and without asyncio).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import dcap_qvl
import orjson

from oauth3.attestation import LAYOUT_V2, AttestationError, parse_quote, parse_strict_json

from .bundle import Bundle, BundleError, evidence_from_bundle
from .collateral import load_collateral, quote_is_readable
from .errors import VerifierError
from .intel_checks import chain_facts, collateral_identity
from .network_defaults import DEFAULT_PCCS_URL, DEFAULT_TIMEOUT
from .step_basics import Evidence, VerifyOptions
from .steps import run_steps
from .verdict import Verdict

if TYPE_CHECKING:
    import aiohttp

MAX_RESPONSE = 1 << 20


class FetchError(VerifierError):
    """The service could not be reached or answered with an error (exit code 2)."""


@dataclass(frozen=True, slots=True)
class CollateralSource:
    """Where collateral comes from: a loaded file wins, else the PCCS (`pccs_given` when the
    user named it, so it also wins over collateral stored in a bundle)."""

    collateral: dcap_qvl.QuoteCollateralV3 | None = None
    pccs_url: str = DEFAULT_PCCS_URL
    pccs_given: bool = False


def _problem_summary(body: bytes) -> str:
    try:
        doc = parse_strict_json(body)
    except AttestationError:
        return ""
    if not isinstance(doc, dict):
        return ""
    parts = [str(doc[k])[:200] for k in ("title", "detail") if isinstance(doc.get(k), str)]
    return ": " + ": ".join(parts) if parts else ""


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    from .http_client import HttpFailure, get_capped  # noqa: PLC0415 - online only

    try:
        answer = await get_capped(session, url, MAX_RESPONSE)
    except HttpFailure as exc:
        raise FetchError(str(exc)) from None
    if answer.status != 200:
        raise FetchError(f"GET {url}: HTTP {answer.status}{_problem_summary(answer.body)}")
    return answer.body


async def fetch_evidence(
    session: aiohttp.ClientSession, url: str, nonce: bytes | None, *, batch: bool = True
) -> Bundle:
    """GET `<url>/info` (bytes kept exactly) and `<url>/attestation[?nonce=hex]`, asking for a
    batched (oauth3/v2) quote when there is a nonce, unless `batch` is off."""
    base = url.rstrip("/")
    fetched_at = int(time.time())
    info = await _get(session, f"{base}/info")
    query = f"?nonce={nonce.hex()}" if nonce is not None else ""
    if nonce is not None and batch:
        query += f"&layout={LAYOUT_V2}"
    body = await _get(session, f"{base}/attestation{query}")
    try:
        attestation = parse_strict_json(body)
    except AttestationError as exc:
        raise FetchError(f"GET {base}/attestation: not JSON: {exc}") from None
    if not isinstance(attestation, dict):
        raise FetchError(f"GET {base}/attestation: not a JSON object")
    return Bundle(url=url, fetched_at=fetched_at, nonce=nonce, info=info, attestation=attestation)


def _is_simulator_quote(evidence: Evidence) -> bool:
    try:
        return chain_facts(parse_quote(evidence.quote)).names_simulator
    except Exception:  # an unparsable quote fails its own step; fetch nothing for it
        return True


def collateral_at_hand(
    source: CollateralSource,
    evidence: Evidence,
    options: VerifyOptions,
    stored: dict[str, object] | None = None,
) -> tuple[bool, dcap_qvl.QuoteCollateralV3 | None]:
    """(True, what to verify with) when no PCCS needs asking: none needed, a file, or `stored`
    (unless a PCCS was named); (False, None) when the PCCS must be asked."""
    if options.skip_dcap or not quote_is_readable(evidence.quote):
        return True, None  # an unreadable quote fails its own step, whatever the other options
    if not options.allow_simulated and _is_simulator_quote(evidence):
        return True, None  # it fails the simulated step whatever the collateral; ask no PCCS
    if source.collateral is not None:
        return True, source.collateral
    if stored is not None and not source.pccs_given:
        return True, load_collateral(orjson.dumps(stored))
    return False, None


async def verify_evidence(
    evidence: Evidence,
    options: VerifyOptions,
    source: CollateralSource,
    *,
    stored: dict[str, object] | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Verdict, dcap_qvl.QuoteCollateralV3 | None]:
    """Obtain collateral for the evidence, then run the steps; returns the verdict and the
    collateral it used. Raises CollateralError on network or format problems (exit code 2)."""
    settled, collateral = collateral_at_hand(source, evidence, options, stored)
    if not settled:
        from .http_client import client_session  # noqa: PLC0415 - online only
        from .pccs import fetch_collateral  # noqa: PLC0415 - online only

        async with client_session(request_timeout) as session:
            collateral = await fetch_collateral(session, source.pccs_url, evidence.quote)
    return run_steps(evidence, options, collateral), collateral


async def verify_bundle(
    bundle: Bundle,
    options: VerifyOptions,
    source: CollateralSource,
    *,
    online: bool = False,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Verdict, Bundle]:
    """Verify fetched (`online`) or saved evidence; returns the verdict and the bundle with the
    collateral used and its identity. Raises BundleError, CollateralError or FetchError for
    malformed input and network errors."""
    evidence = evidence_from_bundle(bundle, online=online)
    verdict, collateral = await verify_evidence(
        evidence, options, source, stored=bundle.collateral, request_timeout=request_timeout
    )
    return _checked_bundle(bundle, evidence, verdict, collateral)


def verify_bundle_offline(
    bundle: Bundle, options: VerifyOptions, source: CollateralSource
) -> tuple[Verdict, Bundle] | None:
    """verify_bundle for saved evidence whose collateral is at hand (see collateral_at_hand),
    without the network or an event loop; None when a PCCS must be asked (use verify_bundle)."""
    evidence = evidence_from_bundle(bundle, online=False)
    settled, collateral = collateral_at_hand(source, evidence, options, bundle.collateral)
    if not settled:
        return None
    verdict = run_steps(evidence, options, collateral)
    return _checked_bundle(bundle, evidence, verdict, collateral)


def _checked_bundle(
    bundle: Bundle,
    evidence: Evidence,
    verdict: Verdict,
    collateral: dcap_qvl.QuoteCollateralV3 | None,
) -> tuple[Verdict, Bundle]:
    if collateral is None:
        return verdict, bundle
    return verdict, replace(
        bundle,
        collateral=orjson.loads(collateral.to_json()),
        collateral_identity=collateral_identity(evidence.quote, collateral),
    )


async def verify_url(
    url: str,
    options: VerifyOptions,
    source: CollateralSource,
    *,
    nonce: bytes | None,
    batch: bool = True,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Verdict, Bundle]:
    """Fetch /info and /attestation from a running oauth3 service and verify them.
    Raises FetchError, BundleError or CollateralError (exit code 2 on the command line)."""
    from .http_client import client_session  # noqa: PLC0415 - online only

    async with client_session(request_timeout) as session:
        bundle = await fetch_evidence(session, url, nonce, batch=batch)
    return await verify_bundle(
        bundle, options, source, online=True, request_timeout=request_timeout
    )


__all__ = [
    "BundleError",
    "CollateralSource",
    "FetchError",
    "collateral_at_hand",
    "fetch_evidence",
    "verify_bundle",
    "verify_bundle_offline",
    "verify_evidence",
    "verify_url",
]
