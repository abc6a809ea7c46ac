"""The oauth3 client verifier: hardware (Intel DCAP) and code (/info, event log), fail-closed."""

from .bundle import Bundle, BundleError, load_bundle, save_bundle
from .collateral import CollateralError, fetch_collateral, load_collateral
from .fetch import CollateralSource, FetchError, verify_bundle, verify_url
from .steps import EXIT_CODES, Evidence, Outcome, Policy, Step, StepResult, Verdict, verify_evidence

__all__ = [
    "EXIT_CODES",
    "Bundle",
    "BundleError",
    "CollateralError",
    "CollateralSource",
    "Evidence",
    "FetchError",
    "Outcome",
    "Policy",
    "Step",
    "StepResult",
    "Verdict",
    "fetch_collateral",
    "load_bundle",
    "load_collateral",
    "save_bundle",
    "verify_bundle",
    "verify_evidence",
    "verify_url",
]
