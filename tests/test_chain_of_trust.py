"""Every way to make oauth3-verify say yes to evidence it must refuse, played end to end.

Each test starts the real stack (simulator, sidecar, service as processes), lets the simulator or a
man in the middle play one attack, and runs the real CLI against it. On the verifier before the
chain-of-trust work each of these exited 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from oauth3.attestation.dstack_os import os_releases, release_for
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
from tests.verifycli import step, verify, verify_text

SIMULATED = ["--allow-simulated"]
ANOTHER_APP = hashlib.sha256(b"the app the operator claims to run").hexdigest()


@pytest.fixture(scope="module")
def honest() -> Iterator[RunningStack]:
    with running_stack() as started:
        yield started


async def test_the_printed_positive_path_is_simulated_exit_0(honest: RunningStack) -> None:
    code, report = await verify([honest.base_url, *SIMULATED, *policy(honest), *collateral(honest)])
    assert (code, report["verdict"]) == (0, "SIMULATED"), report
    assert all(s["ok"] for s in report["steps"]), report["steps"]
    # make run pins the simulated OS release, which the platform step recomputes
    platform = step(report, "platform")
    assert "your pinned OS release (policy" in platform["details"]["vouched_by"]
    assert platform["details"]["os"]["named_from"].startswith("recomputed")
    assert "exactly what the pinned OS release boots to" in platform["reason"]


# 1. compose hash spoofing through the event log -------------------------------------------


async def test_retyped_os_events_with_an_emitted_compose_hash_fail_event_log(
    honest: RunningStack,
) -> None:
    env = {
        "OAUTH3_SIM_ATTACKS": "retyped-os-events",
        "OAUTH3_SIM_EMIT_EVENTS": f"compose-hash={ANOTHER_APP}",
    }
    with running_stack(**env) as spoofing:
        # the relying party pins the app the operator claims, and the honest platform
        args = [spoofing.base_url, *SIMULATED, *root(spoofing), *collateral(spoofing)]
        pins = ["--expect-compose-hash", ANOTHER_APP, *platform_flags(honest)]
        code, report = await verify([*args, *pins])
    assert code == 15, report
    assert "only dstack runtime events" in step(report, "event_log")["reason"]
    assert step(report, "hardware")["ok"] is True
    assert step(report, "compose")["ok"] is False
    assert report["compose_hash"] is None


async def test_events_the_app_emitted_after_boot_never_supply_the_compose_hash() -> None:
    with running_stack(OAUTH3_SIM_EMIT_EVENTS=f"compose-hash={ANOTHER_APP},app-id=00") as stack:
        args = [stack.base_url, *SIMULATED, *policy(stack), *collateral(stack)]
        code, report = await verify(args)
        assert code == 0, report
        assert report["compose_hash"] == manifest_compose_hash()
        events = step(report, "event_log")["details"]["app_events"]
        assert [e["event"] for e in events] == ["compose-hash", "app-id"]
        assert "never read as OS facts" in step(report, "event_log")["reason"]
        pins = [*platform_flags(stack), "--expect-compose-hash", ANOTHER_APP]
        code, report = await verify(
            [stack.base_url, *SIMULATED, *root(stack), *collateral(stack), *pins]
        )
    assert code == 16
    assert "not one you pinned" in step(report, "compose")["reason"]


def platform_flags(stack: RunningStack) -> list[str]:
    """Platform pins read from a stack's policy file (what make run observed)."""
    text = stack.paths.policy.read_text()
    values = {
        line.split(" = ")[0]: line.split('"')[1]
        for line in text.splitlines()
        if line.split(" = ")[0] in ("mrtd", "rtmr0", "rtmr1", "rtmr2")
    }
    return [part for key, value in values.items() for part in (f"--expect-{key}", value)]


# 2. platform and OS pinning --------------------------------------------------------------


async def test_another_mrtd_fails_the_pinned_platform(honest: RunningStack) -> None:
    with running_stack(OAUTH3_SIM_ATTACKS="other-mrtd") as other:
        # the honest stack's app and platform pins; this stack's own mock root (it is dated)
        pins = ["--expect-compose-hash", manifest_compose_hash(), *platform_flags(honest)]
        code, report = await verify(
            [other.base_url, *SIMULATED, *root(other), *collateral(other), *pins]
        )
    assert code == 21, report
    assert "MRTD" in step(report, "platform")["reason"]
    assert step(report, "compose")["ok"] is True


async def test_a_dev_os_the_host_names_is_refused_even_when_its_registers_are_pinned() -> None:
    with running_stack(OAUTH3_SIM_ATTACKS="dev-os") as dev:
        assert not dev.paths.policy.exists()  # make run's own check refused it too
        args = [dev.base_url, *SIMULATED, *observed_pins(dev), *collateral(dev)]
        code, report = await verify(args)
        os_facts = step(report, "platform")["details"]["os"]
        assert code == 21, report
        assert "dev image" in step(report, "platform")["reason"]
        release = release_for(bytes.fromhex(os_facts["os_image_hash"]))
        assert release is not None
        assert release.dev
        assert os_facts["image"] == release.image
        code, report = await verify([*args, "--allow-dev-os"])
    assert code == 0, report


async def test_an_unmeasured_os_is_never_called_production_on_the_hosts_word(
    tmp_path: Path,
) -> None:
    """Without a KMS the OS measures no os-image-hash: only the host's vmConfig names it, and the
    host can blank or rewrite it. The verifier then says the RTMR0-2 pins decide, and never
    that the image is a production one; --write-policy says to check those registers."""
    production = next(r for r in os_releases().values() if not r.dev)
    with running_stack(OAUTH3_SIM_ATTACKS="dev-os") as dev:

        async def claim_production(request: web.Request) -> web.Response:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{dev.base_url}{request.path_qs}") as upstream,
            ):
                body = await upstream.read()
            if request.path == "/attestation":
                doc = orjson.loads(body)
                doc["vmConfig"] = json.dumps({"os_image_hash": production.os_image_hash.hex()})
                body = orjson.dumps(doc)
            return web.Response(body=body, content_type="application/json")

        written = tmp_path / "policy.toml"
        args = [*SIMULATED, *observed_pins(dev), *collateral(dev), "--write-policy", str(written)]
        async with serving(claim_production) as url:
            code, report = await verify([url, *args])
    platform = step(report, "platform")
    assert platform["details"]["os"]["measured"] is False
    assert platform["details"]["os"]["named_from"] == "host-supplied vm_config"
    assert "not measured" in platform["reason"]
    assert "rests on the RTMR0-2 pins" in platform["reason"]
    assert any("the OS image was not measured" in note for note in report["notes"])
    assert code == 0, report  # the pins are what the relying party vouched for, dev or not


# 3. success without expectations -----------------------------------------------------------


async def test_nothing_pinned_is_unpinned_exit_3(honest: RunningStack) -> None:
    args = [honest.base_url, *SIMULATED, *root(honest), *collateral(honest)]
    code, report = await verify(args)
    assert (code, report["verdict"]) == (3, "UNPINNED")
    assert {s["name"] for s in report["steps"] if s["outcome"] == "unpinned"} == {
        "platform",
        "compose",
    }
    code, text = await verify_text(args)
    assert text.splitlines()[-1].startswith("UNPINNED (exit 3)")
    assert "VERIFIED" not in text


async def test_write_policy_is_the_on_ramp(honest: RunningStack, tmp_path: Path) -> None:
    written = tmp_path / "policy.toml"
    args = [honest.base_url, *SIMULATED, *collateral(honest)]
    code, report = await verify([*args, *root(honest), "--write-policy", str(written)])
    assert code == 3
    assert any("policy written" in note for note in report["notes"])
    text = written.read_text()
    assert manifest_compose_hash() in text
    # the simulated release recomputed to the quote: the release is pinned, not the registers
    release = step(report, "platform")["details"]["os"]["os_image_hash"]
    assert f'image_hashes = [\n  "{release}",\n]' in text
    assert "[[platform]]" not in text
    code, report = await verify([*args, "--policy", str(written)])
    assert (code, report["verdict"]) == (0, "SIMULATED"), report
    refused = tmp_path / "refused.toml"
    code, report = await verify(
        [*args, *root(honest), "--expect-compose-hash", ANOTHER_APP, "--write-policy", str(refused)]
    )
    assert code == 16
    assert not refused.exists()
    assert any("NOT written" in note for note in report["notes"])


# 4. bundles date themselves ------------------------------------------------------------


async def test_a_bundle_is_checked_now_not_when_it_says(tmp_path: Path) -> None:
    with running_stack(OAUTH3_SIM_COLLATERAL_VALIDITY_S="10") as short:
        saved = tmp_path / "bundle.json"
        args = [*SIMULATED, *policy(short)]
        await verify([short.base_url, *args, *collateral(short), "--save-bundle", str(saved)])
    bundle = orjson.loads(saved.read_bytes())
    expires = json.loads(bundle["collateral"]["tcb_info"])["nextUpdate"]
    until = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    await asyncio.sleep(max(0.0, until - time.time()) + 1.5)  # the collateral of its day expires
    code, report = await verify(["--bundle", str(saved), *args])
    assert code == 11, report
    assert "--pccs" in step(report, "hardware")["reason"]
    # checked as of the time it claims, it holds, and still says freshness is unproven
    code, report = await verify(["--bundle", str(saved), *args, "--at", bundle["fetchedAt"]])
    assert (code, report["verdict"]) == (5, "NOT_FRESH"), report
    nonce = step(report, "nonce")
    assert nonce["outcome"] == "not_fresh"
    assert "recorded in the bundle" in nonce["reason"]
    assert report["evidence"]["fetched_at_source"] == "the bundle's own claim, unproven"
    # a bundle that dates itself elsewhere does not move the check time
    bundle["fetchedAt"] = "2100-01-01T00:00:00Z"
    saved.write_bytes(orjson.dumps(bundle))
    code, report = await verify(["--bundle", str(saved), *args])
    assert code == 11
    assert report["checked_at"] != "2100-01-01T00:00:00Z"
    assert report["evidence"]["fetched_at"] == "2100-01-01T00:00:00Z"


# 5. PARTIAL is never 0; a debug TD is refused in every mode --------------------------------


async def test_skip_dcap_and_a_debug_td() -> None:
    with running_stack(OAUTH3_SIM_ATTACKS="debug-td") as debug:
        pins = observed_pins(debug)  # even with every register pinned as observed
        code, report = await verify([debug.base_url, *SIMULATED, *pins, "--skip-dcap"])
        assert code == 21, report
        assert "DEBUG mode" in step(report, "platform")["reason"]
        code, report = await verify([debug.base_url, *SIMULATED, *pins, *collateral(debug)])
    # DCAP refuses a debug TD first; the platform step would too
    assert code == 11, report
    assert "Debug mode" in step(report, "hardware")["reason"]
    assert step(report, "platform")["ok"] is False


async def test_skip_dcap_on_an_honest_stack_is_partial(honest: RunningStack) -> None:
    code, report = await verify([honest.base_url, *SIMULATED, *policy(honest), "--skip-dcap"])
    assert (code, report["verdict"]) == (4, "PARTIAL")


# 6. terminal injection and --json ----------------------------------------------------------


ESCAPES = "\x1b[2K\r\x1b[32mVERIFIED\x1b[0m\n\u202e"


async def test_strings_from_evidence_cannot_drive_the_terminal(
    honest: RunningStack, tmp_path: Path
) -> None:
    saved = tmp_path / "bundle.json"
    await verify(
        [
            honest.base_url,
            *SIMULATED,
            *policy(honest),
            *collateral(honest),
            "--save-bundle",
            str(saved),
        ]
    )
    bundle = orjson.loads(saved.read_bytes())
    bundle["url"] = f"https://evil.example/{ESCAPES}"
    bundle["attestation"]["vmConfig"] = json.dumps({"os_image_hash": ESCAPES, "n": 10**30})
    saved.write_bytes(orjson.dumps(bundle))
    # register pins: the hostile vm_config carries no release document to recompute
    args = ["--bundle", str(saved), *SIMULATED, *observed_pins(honest)]
    code, text = await verify_text(args)
    assert code == 5
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\u202e" not in text
    assert "\\x1b[2K\\x0d" in text
    assert not any(line.startswith("VERIFIED") for line in text.splitlines())
    code, report = await verify(args)
    assert code == 5
    assert report["subject"].endswith(ESCAPES)  # the same value, safely encoded
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauth3.verifier.cli",
        *args,
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 5
    assert b"\x1b" not in stdout
    assert json.loads(stdout)["verdict"] == "NOT_FRESH"


async def test_json_is_printed_for_errors_and_error_text_is_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def hostile(request: web.Request) -> web.Response:
        problem = {"title": f"Agent down{ESCAPES}", "status": 503, "type": "about:blank"}
        return web.json_response(problem, status=503, content_type="application/problem+json")

    async with serving(hostile) as url:
        code, report = await verify([url, *SIMULATED, "--skip-dcap"])
    assert code == 2
    assert report["verdict"] == "ERROR"
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert err.count("\n") == 1


# 7. bodies that arrive in pieces ----------------------------------------------------------


async def test_a_body_delivered_in_two_pieces_is_read_whole(honest: RunningStack) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{honest.base_url}{request.path_qs}") as upstream,
        ):
            body = await upstream.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(0.3)
        await response.write(body[len(body) // 2 :])
        await response.write_eof()
        return response

    async with serving(slow) as url:
        code, report = await verify([url, *SIMULATED, *policy(honest), *collateral(honest)])
    assert code == 0, report


# formats real agents send --------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["full", "stripped"])
async def test_v2_runtime_events_verify(log_format: str) -> None:
    env = {"OAUTH3_SIM_RUNTIME_EVENTS": "2", "OAUTH3_SIM_EVENT_LOG": log_format}
    with running_stack(**env) as v2:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{v2.base_url}/attestation") as response,
        ):
            log = json.loads((await response.json())["eventLog"])
        code, report = await verify([v2.base_url, *SIMULATED, *policy(v2), *collateral(v2)])
    runtime = [e for e in log if e["imr"] == 3]
    assert all(e["version"] == 2 and e["preimage"] for e in runtime)
    assert code == 0, report


async def test_the_pccs_serves_what_the_js_client_asks_for(honest: RunningStack) -> None:
    async with aiohttp.ClientSession() as session:
        for ca in ("processor", "platform"):
            url = f"{honest.pccs_url}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["SGX-PCK-CRL-Issuer-Chain"]


def test_a_real_intel_quote_with_retyped_events_fails_event_log(
    vectors: Path, tmp_path: Path
) -> None:
    report_path = vectors / "dstack-head/verifier-fixtures/quote-report.json"
    doc = json.loads(report_path.read_text())
    events = json.loads(doc["event_log"])
    for event in events:
        if event["imr"] == 3 and event["event"] in ("compose-hash", "system-ready"):
            event["event_type"] = 0x80000007
    doc["event_log"] = json.dumps(events)
    edited = tmp_path / "report.json"
    edited.write_text(json.dumps(doc))
    args = [
        "--dstack-quote",
        str(edited),
        "--collateral",
        str(vectors / "dcap-qvl/sample/tdx_quote_outdated_collateral.json"),
        "--at",
        "2026-03-20T10:41:14Z",
        "--json",
    ]
    process = subprocess.run(
        [sys.executable, "-m", "oauth3.verifier.cli", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )
    report = json.loads(process.stdout)
    assert process.returncode == 15, report
    assert step(report, "hardware")["ok"] is True
    assert "only dstack runtime events" in step(report, "event_log")["reason"]
