"""The simulator's simulated OS release, booted the dstack 0.6 lite way: a document that binds,
is never mistakable for a dstack release, and recomputes (by the attestation package's dstack-mr
port) to exactly the registers the simulated quote carries."""

from __future__ import annotations

import hashlib
import json
import tomllib
from datetime import UTC, datetime

import pytest

from oauth3.attestation import parse_event_log, parse_quote
from oauth3.attestation.dstack_os import release_for
from oauth3.attestation.measurement_document import document_from_vm_config
from oauth3.simulator.mockdcap import MockDcap
from oauth3.simulator.release import NOTICE_FILE
from oauth3.simulator.settings import default_app_compose
from oauth3.simulator.state import CvmVariant, SimulatedCvm, build_cvm
from oauth3.verifier.os_release import ReleaseMismatch, recompute
from oauth3.verifier.policy import Policy
from tests.stack import collateral, manifest_compose_hash, root, running_stack
from tests.verifycli import step, verify

DCAP = MockDcap(b"release-test", datetime(2026, 6, 1, tzinfo=UTC))


def boot(seed: str = "release-test", **variant: object) -> SimulatedCvm:
    return build_cvm(default_app_compose(), seed, DCAP.signer, CvmVariant(**variant))  # type: ignore[arg-type]


def test_the_release_binds_and_says_it_is_simulated() -> None:
    cvm = boot()
    vm_config = json.loads(cvm.vm_config)
    document = document_from_vm_config(vm_config)
    assert document is not None
    assert document.os_image_hash == hashlib.sha256(document.checksum_file).digest()
    assert vm_config["os_image_hash"] == cvm.os_image_hash.hex() == document.os_image_hash.hex()
    assert NOTICE_FILE.encode() in document.checksum_file
    assert vm_config["image"] == "oauth3-simulated-release"
    assert vm_config["tdx_attestation_variant"] == "lite"
    assert release_for(cvm.os_image_hash) is None  # in no table of dstack releases
    assert boot("another seed").os_image_hash != cvm.os_image_hash


@pytest.mark.parametrize("fmt", ["full", "stripped"])
@pytest.mark.parametrize("kms", [False, True])
def test_the_release_recomputes_to_the_quotes_registers(fmt: str, kms: bool) -> None:
    cvm = boot(kms=kms)
    report = parse_quote(cvm.quote(bytes(64))).report
    events = parse_event_log(cvm.event_log(fmt))  # type: ignore[arg-type]
    recomputed = recompute(json.loads(cvm.vm_config), events, report, Policy())
    assert recomputed.unavailable is None
    assert recomputed.os_image_hash == cvm.os_image_hash
    assert recomputed.registers == {
        "mrtd": report.mr_td,
        **{f"rtmr{i}": report.rtmr[i] for i in range(3)},
    }


def test_another_mrtd_contradicts_the_release() -> None:
    cvm = boot(attacks=frozenset({"other-mrtd"}))
    report = parse_quote(cvm.quote(bytes(64))).report
    with pytest.raises(ReleaseMismatch, match="MRTD"):
        recompute(json.loads(cvm.vm_config), list(cvm.events), report, Policy())


def test_a_dev_image_or_no_release_boots_without_a_document() -> None:
    for cvm in (boot(attacks=frozenset({"dev-os"})), boot(os_release="none")):
        vm_config = json.loads(cvm.vm_config)
        assert "tdx_measurement" not in vm_config
        assert document_from_vm_config(vm_config) is None
    dev = release_for(boot(attacks=frozenset({"dev-os"})).os_image_hash)
    assert dev is not None
    assert dev.dev


async def test_oauth3_verify_pins_the_simulated_release_by_flag() -> None:
    with running_stack() as stack:
        release = tomllib.loads(stack.paths.policy.read_text())["os"]["image_hashes"]
        args = [stack.base_url, "--allow-simulated", *root(stack), *collateral(stack)]
        args += ["--expect-compose-hash", manifest_compose_hash()]
        code, report = await verify([*args, "--expect-os-image-hash", release[0]])
        assert (code, report["verdict"]) == (0, "SIMULATED"), report
        platform = step(report, "platform")
        assert platform["details"]["os"]["os_image_hash"] == release[0]
        assert "recomputed from the release's measurement document" in platform["reason"]
        code, report = await verify([*args, "--expect-os-image-hash", "ab" * 32])
    assert code == 21, report
    assert "not a pinned release" in step(report, "platform")["reason"]
