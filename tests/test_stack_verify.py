"""oauth3-verify against the real local stack, as `make run` starts it, mock Intel root included."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.stack import (
    RunningStack,
    collateral,
    manifest_compose_hash,
    observed_pins,
    policy,
    root,
    running_stack,
    serving,
)
from tests.verifycli import step, verify

SIMULATED = ["--allow-simulated"]


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    with running_stack() as started:
        yield started


async def test_full_check_with_mock_root_over_the_simulators_pccs(stack: RunningStack) -> None:
    code, report = await verify(
        [stack.base_url, *SIMULATED, *policy(stack), "--pccs", stack.pccs_url]
    )
    assert code == 0, report
    assert report["verdict"] == "SIMULATED"
    assert all(s["ok"] for s in report["steps"]), report["steps"]
    assert report["tcb_status"] == "UpToDate"
    assert report["compose_hash"] == manifest_compose_hash()


def test_console_script_as_a_user_runs_it(stack: RunningStack) -> None:
    argv = [sys.executable, "-m", "oauth3.verifier.cli", stack.base_url]
    allowed = subprocess.run(
        [*argv, *SIMULATED, *policy(stack), *collateral(stack)], capture_output=True, check=False
    )
    assert allowed.returncode == 0, allowed.stderr
    assert b"SIMULATED" in allowed.stdout
    refused = subprocess.run([*argv, *collateral(stack)], capture_output=True, check=False)
    assert refused.returncode == 17
    assert b"FAILED at simulated" in refused.stdout


async def test_without_mock_root_hardware_fails(stack: RunningStack) -> None:
    code, report = await verify([stack.base_url, *SIMULATED, *collateral(stack)])
    assert code == 11
    assert not step(report, "hardware")["ok"]


async def test_expected_compose_hash(stack: RunningStack) -> None:
    unpinned = [stack.base_url, *SIMULATED, *root(stack), *collateral(stack)]
    code, report = await verify(unpinned)
    assert (code, report["verdict"]) == (3, "UNPINNED")
    code, report = await verify([*unpinned, "--expect-compose-hash", "ab" * 32])
    assert code == 16
    assert not step(report, "compose")["ok"]
    pinned = [stack.base_url, *SIMULATED, *policy(stack), *collateral(stack)]
    assert (await verify(pinned))[0] == 0
    code, report = await verify([*pinned, "--expect-compose-hash", manifest_compose_hash()])
    assert code == 2
    assert "pinned both" in report["error"]


@asynccontextmanager
async def proxy(
    upstream: str, *, tamper_info: bool = False, replay: bool = False
) -> AsyncIterator[str]:
    """A man in the middle on 127.0.0.1: edits /info bytes, or replays the first /attestation."""
    remembered: dict[str, bytes] = {}

    async def forward(request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{upstream}{request.path_qs}") as response,
        ):
            body = await response.read()
        if tamper_info and request.path == "/info":
            body = body.replace(b'"oauth3"', b'"oauth4"')
        if replay and request.path == "/attestation":
            body = remembered.setdefault("attestation", body)
        return web.Response(body=body, status=response.status, content_type="application/json")

    async with serving(forward) as url:
        yield url


async def test_tampered_info_fails_binding(stack: RunningStack) -> None:
    async with proxy(stack.base_url, tamper_info=True) as url:
        code, report = await verify([url, *SIMULATED, *policy(stack), *collateral(stack)])
    assert code == 13
    assert not step(report, "info_binding")["ok"]


async def test_replayed_response_fails_nonce(stack: RunningStack) -> None:
    async with proxy(stack.base_url, replay=True) as url:
        first = await verify([url, *SIMULATED, *policy(stack), *collateral(stack)])
        second = await verify([url, *SIMULATED, *policy(stack), *collateral(stack)])
    assert first[0] == 0
    assert second[0] == 14
    assert not step(second[1], "nonce")["ok"]


async def test_saved_bundle_with_a_flipped_byte_fails_hardware(
    stack: RunningStack, tmp_path: Path
) -> None:
    saved = tmp_path / "bundle.json"
    args = [*SIMULATED, *policy(stack), *collateral(stack)]
    assert (await verify([stack.base_url, *args, "--save-bundle", str(saved)]))[0] == 0
    assert (await verify(["--bundle", str(saved), *args]))[0] == 5  # offline: not fresh
    bundle = orjson.loads(saved.read_bytes())
    quote = bytearray(base64.b64decode(bundle["attestation"]["quote"]))
    quote[568 + 40] ^= 0x01  # inside report_data[32:64], the nonce half
    bundle["attestation"]["quote"] = base64.b64encode(bytes(quote)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(orjson.dumps(bundle))
    code, report = await verify(["--bundle", str(tampered), *args])
    assert code == 11
    assert "signature" in step(report, "hardware")["reason"].lower()


@pytest.mark.parametrize(
    ("env", "default_code", "allow", "allowed_code"),
    [
        ({"OAUTH3_SIM_TCB_STATUS": "OutOfDate"}, 12, "OutOfDate", 0),
        (
            {
                "OAUTH3_SIM_TCB_STATUS": "SWHardeningNeeded",
                "OAUTH3_SIM_ADVISORY_IDS": "INTEL-SA-00837",
            },
            12,
            "SWHardeningNeeded",
            12,
        ),
        ({"OAUTH3_SIM_REVOKED_PCK": "1"}, 11, "OutOfDate", 11),
    ],
    ids=["out-of-date", "advisories", "revoked-pck"],
)
async def test_tcb_policy_on_a_real_stack(
    env: dict[str, str], default_code: int, allow: str, allowed_code: int
) -> None:
    with running_stack(**env) as policy_stack:
        args = [
            policy_stack.base_url,
            *SIMULATED,
            *observed_pins(policy_stack),
            *collateral(policy_stack),
        ]
        code, report = await verify(args)
        assert code == default_code, report
        code, report = await verify([*args, "--allow-tcb", allow])
        assert code == allowed_code, report
        if "OAUTH3_SIM_ADVISORY_IDS" in env:
            assert report["advisory_ids"] == ["INTEL-SA-00837"]
            code, report = await verify(
                [*args, "--allow-tcb", allow, "--allow-advisory", "INTEL-SA-00837"]
            )
            assert code == 0, report


async def test_collateral_past_its_validity_fails(stack: RunningStack) -> None:
    args = [stack.base_url, *SIMULATED, *policy(stack), *collateral(stack)]
    code, report = await verify([*args, "--at", "2099-01-01T00:00:00Z"])
    assert code == 11
    assert not step(report, "hardware")["ok"]
