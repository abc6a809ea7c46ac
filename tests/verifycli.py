"""Run `oauth3-verify` in-process from async tests and read its --json report."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from oauth3.attestation import parse_quote
from oauth3.verifier.cli import run


async def verify(args: list[str]) -> tuple[int, dict[str, Any]]:
    """Exit code and --json report of `oauth3-verify ARGS`, run in a thread (it has a loop)."""
    out = io.StringIO()
    code = await asyncio.to_thread(run, [*args, "--json"], out)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


async def verify_text(args: list[str]) -> tuple[int, str]:
    """Exit code and human-readable output of `oauth3-verify ARGS`."""
    out = io.StringIO()
    code = await asyncio.to_thread(run, args, out)
    return code, out.getvalue()


def step(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One named step of a --json report."""
    found: dict[str, Any] = next(s for s in report["steps"] if s["name"] == name)
    return found


def platform_flags(quote: bytes) -> list[str]:
    """`--expect-mrtd/--expect-rtmr0-2` flags pinning the platform this quote measured."""
    report = parse_quote(quote).report
    values = [report.mr_td, *report.rtmr[:3]]
    names = ["--expect-mrtd", "--expect-rtmr0", "--expect-rtmr1", "--expect-rtmr2"]
    return [part for name, value in zip(names, values, strict=True) for part in (name, value.hex())]


def pins_for(quote: bytes, compose_hash: str) -> list[str]:
    """Flags pinning both the app (compose hash) and the platform of this quote."""
    return ["--expect-compose-hash", compose_hash, *platform_flags(quote)]
