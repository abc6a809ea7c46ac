"""The oauth3 client verifier: hardware (Intel DCAP), platform, app and identity, fail-closed.

The names below load on first use, so that a command importing one module of the package (say
`oauth3-verify --help`) does not pay for the HTTP client and DCAP it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bundle import Bundle, BundleError, load_bundle, save_bundle
    from .collateral import CollateralError, load_collateral
    from .errors import VerifierError
    from .pccs import fetch_collateral
    from .pipeline import CollateralSource, FetchError, verify_bundle, verify_evidence, verify_url
    from .policy import PlatformPin, Policy, PolicyError, load_policy, parse_policy, render_policy
    from .step_basics import Evidence, VerifyOptions
    from .steps import run_steps
    from .verdict import EXIT_CODES, Outcome, Step, StepResult, Verdict, VerdictName

_HOMES = {
    "bundle": ("Bundle", "BundleError", "load_bundle", "save_bundle"),
    "collateral": ("CollateralError", "load_collateral"),
    "pccs": ("fetch_collateral",),
    "errors": ("VerifierError",),
    "pipeline": (
        "CollateralSource",
        "FetchError",
        "verify_bundle",
        "verify_evidence",
        "verify_url",
    ),
    "policy": (
        "PlatformPin",
        "Policy",
        "PolicyError",
        "load_policy",
        "parse_policy",
        "render_policy",
    ),
    "step_basics": ("Evidence", "VerifyOptions"),
    "steps": ("run_steps",),
    "verdict": ("EXIT_CODES", "Outcome", "Step", "StepResult", "Verdict", "VerdictName"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

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
    "VerifierError",
    "VerifyOptions",
    "fetch_collateral",
    "load_bundle",
    "load_collateral",
    "load_policy",
    "parse_policy",
    "render_policy",
    "run_steps",
    "save_bundle",
    "verify_bundle",
    "verify_evidence",
    "verify_url",
]


def __getattr__(name: str) -> object:
    """Load a public name from its module on first use."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups find it without this function
    return value
