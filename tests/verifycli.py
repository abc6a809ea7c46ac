"""Run `oauth3-verify` in-process from async tests and read its --json report."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

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
