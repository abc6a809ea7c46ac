"""The verifier's KMS paths end to end: the real stack booted with a simulated KMS (as Phala Cloud
production boots), the policy make run writes for it, key-provider pinning, and the KMS's lies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oauth3.simulator.kms import simulated_kms_id
from oauth3.simulator.settings import DEFAULT_SEED
from tests.stack import (
    RunningStack,
    collateral,
    manifest_compose_hash,
    observed_pins,
    policy,
    running_stack,
)
from tests.verifycli import step, verify

SIMULATED = ["--allow-simulated"]
GENUINE_KMS = f"kms:{simulated_kms_id(DEFAULT_SEED).hex()}"
OTHER_KMS = f"kms:{simulated_kms_id(DEFAULT_SEED, genuine=False).hex()}"


@pytest.fixture(scope="module")
def kms_stack() -> Iterator[RunningStack]:
    with running_stack(OAUTH3_SIM_KMS="1") as started:
        yield started


async def test_make_runs_policy_pins_the_kms_and_verifies(kms_stack: RunningStack) -> None:
    text = kms_stack.paths.policy.read_text()
    assert f'key_providers = ["{GENUINE_KMS}"]' in text
    code, report = await verify(
        [kms_stack.base_url, *SIMULATED, *policy(kms_stack), *collateral(kms_stack)]
    )
    assert (code, report["verdict"]) == (0, "SIMULATED"), report
    compose = step(report, "compose")
    assert "key provider pinned" in compose["reason"]
    assert compose["details"]["key_provider"] == '{"name":"kms","id":"' + GENUINE_KMS[4:] + '"}'
    assert report["key_provider"] == compose["details"]["key_provider"]
    # with a KMS the OS measured its image hash: the platform step names it from RTMR3
    assert step(report, "platform")["details"]["os"]["named_from"] != "host-supplied vm_config"
    assert "os-image-hash" in step(report, "event_log")["details"]["os_events"]
    assert report["compose_hash"] == manifest_compose_hash()
    assert report["app_id"] != manifest_compose_hash()[:40]


async def test_a_flag_pins_the_key_provider(kms_stack: RunningStack) -> None:
    args = [kms_stack.base_url, *SIMULATED, *observed_pins(kms_stack), *collateral(kms_stack)]
    code, report = await verify([*args, "--expect-key-provider", GENUINE_KMS])
    assert code == 0, report
    code, report = await verify([*args, "--expect-key-provider", OTHER_KMS])
    assert code == 16, report
    assert "is not one you pinned" in step(report, "compose")["reason"]
    code, report = await verify([*args, "--expect-key-provider", "none:"])
    assert code == 16, report


@pytest.mark.parametrize("bad", ["kms", "kms:", "kms:xyz", "none:00", "vault:00", "kms:abc"])
async def test_a_malformed_key_provider_flag_is_a_usage_error(
    kms_stack: RunningStack, bad: str
) -> None:
    code, report = await verify(
        [kms_stack.base_url, *SIMULATED, *collateral(kms_stack), "--expect-key-provider", bad]
    )
    assert code == 2
    assert report["verdict"] == "ERROR"
    assert "--expect-key-provider" in report["error"]


@pytest.mark.parametrize("attacks", ["other-kms", "late-key-provider"])
async def test_keys_from_a_kms_nobody_pinned_fail_compose(
    kms_stack: RunningStack, attacks: str
) -> None:
    """A host that boots the app against its own KMS gets its keys; pinning the KMS refuses it,
    even when the app emits the genuine KMS's key-provider after boot."""
    with running_stack(OAUTH3_SIM_KMS="1", OAUTH3_SIM_ATTACKS=attacks) as lying:
        # the honest stack's app and platform, and the genuine KMS: what the relying party pins
        args = [lying.base_url, *SIMULATED, *observed_pins(lying), *collateral(lying)]
        code, report = await verify([*args, "--expect-key-provider", GENUINE_KMS])
        assert OTHER_KMS in lying.paths.policy.read_text()  # make run observes the KMS used
    assert code == 16, report
    assert step(report, "compose")["ok"] is False
    assert OTHER_KMS in step(report, "compose")["reason"]
    late = [e["event"] for e in step(report, "event_log")["details"]["app_events"]]
    assert late == (["key-provider"] if attacks == "late-key-provider" else [])


async def test_an_os_image_hash_emitted_after_boot_never_names_the_os() -> None:
    """A dev image booted with a KMS measures its own hash; a production release's hash emitted
    later by the app is listed as an app event and the dev image is still refused."""
    with running_stack(OAUTH3_SIM_KMS="1", OAUTH3_SIM_ATTACKS="dev-os,late-os-image-hash") as dev:
        args = [dev.base_url, *SIMULATED, *observed_pins(dev), *collateral(dev)]
        code, report = await verify(args)
    assert code == 21, report
    assert "dev" in step(report, "platform")["reason"]
    late = step(report, "event_log")["details"]["app_events"]
    assert [e["event"] for e in late] == ["os-image-hash"]
