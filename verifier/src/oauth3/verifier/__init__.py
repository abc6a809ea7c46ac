"""The oauth3 client verifier: hardware (Intel DCAP), platform, app and identity, fail-closed."""

from .bundle import Bundle, BundleError, load_bundle, save_bundle
from .collateral import CollateralError, fetch_collateral, load_collateral
from .fetch import CollateralSource, FetchError, verify_bundle, verify_url
from .policy import PlatformPin, Policy, PolicyError, load_policy, parse_policy, render_policy
from .steps import Evidence, VerifyOptions, verify_evidence
from .verdict import EXIT_CODES, Outcome, Step, StepResult, Verdict, VerdictName

__all__ = [
    "EXIT_CODES",
    "Bundle",
    "BundleError",
    "CollateralError",
    "CollateralSource",
    "Evidence",
    "FetchError",
    "Outcome",
    "PlatformPin",
    "Policy",
    "PolicyError",
    "Step",
    "StepResult",
    "Verdict",
    "VerdictName",
    "VerifyOptions",
    "fetch_collateral",
    "load_bundle",
    "load_collateral",
    "load_policy",
    "parse_policy",
    "render_policy",
    "save_bundle",
    "verify_bundle",
    "verify_evidence",
    "verify_url",
]
