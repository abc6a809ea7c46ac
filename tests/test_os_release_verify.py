"""oauth3-verify on dstack's genuine 0.6 lite evidence: a pinned OS release passes the platform
step by recomputation, nothing pinned is never FAILED, and every lie about the release or the
VM shape fails the platform step (exit 21) with a named reason."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from oauth3.attestation import parse_event_log
from oauth3.attestation.dstack_os import os_releases
from oauth3.verifier.cli import run
from oauth3.verifier.observed import observed_policy
from oauth3.verifier.platform_identity import RECOMPUTED, PlatformMismatch, identify_os
from oauth3.verifier.policy import Policy, PolicyError, parse_policy, render_policy
from oauth3.verifier.steps import Evidence, VerifyOptions, run_steps
from tests.verifycli import platform_flags, step

LITE = "dstack-head/verifier-fixtures/tdx-lite-getquote.json"
RELEASE = "e6f5cfec20c02e7b97baa213d0f718020b55e040172d90ccbcb946d56c8b09db"
COMPOSE = "86b0e55f2fa8e4fb69d890f14f54d5612707646e2573d54e0d2ddaaade77caa9"
PINS = ["--expect-os-image-hash", RELEASE, "--expect-compose-hash", COMPOSE, "--skip-dcap"]
EXIT_PLATFORM = 21


def verify(args: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = run([*args, "--json"], out)
    return code, json.loads(out.getvalue())


def fixture(vectors: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((vectors / LITE).read_text())
    return document


def edited(tmp_path: Path, document: dict[str, Any], **vm_changes: Any) -> Path:
    """The fixture with vm_config fields changed (None removes one), written to a file."""
    vm_config = json.loads(document["vm_config"])
    for key, value in vm_changes.items():
        if value is None:
            vm_config.pop(key, None)
        else:
            vm_config[key] = value
    path = tmp_path / "getquote.json"
    path.write_text(json.dumps({**document, "vm_config": json.dumps(vm_config)}))
    return path


def test_the_pinned_release_passes_the_platform_step_by_recomputation(vectors: Path) -> None:
    code, report = verify(["--dstack-quote", str(vectors / LITE), *PINS])
    assert (code, report["verdict"]) == (4, "PARTIAL")
    platform = step(report, "platform")
    assert platform["outcome"] == "pass"
    assert "recomputed" in platform["reason"]
    assert "ACPI contents not verified" in platform["reason"]
    assert platform["details"]["os"]["os_image_hash"] == RELEASE
    # RTMR3's os-image-hash (the KMS's echo) differs in this genuine evidence, and is reported
    assert platform["details"]["release"]["rtmr3_os_image_hash"].startswith("07a2388c")


def test_unpinned_genuine_evidence_is_never_failed(vectors: Path) -> None:
    code, report = verify(["--dstack-quote", str(vectors / LITE), "--skip-dcap"])
    assert report["verdict"] != "FAILED"
    # nothing pinned outranks the skipped DCAP check: any CVM could have produced it
    assert (code, report["verdict"]) == (3, "UNPINNED")
    assert any(gap.startswith("hardware") for gap in report["gaps"])
    assert step(report, "platform")["outcome"] == "unpinned"


def test_raw_register_pins_still_work(vectors: Path) -> None:
    quote = bytes.fromhex(fixture(vectors)["quote"])
    _, report = verify(
        ["--dstack-quote", str(vectors / LITE), "--skip-dcap", *platform_flags(quote)]
    )
    assert step(report, "platform")["outcome"] == "pass"
    assert "match the pinned platform" in step(report, "platform")["reason"]


def platform_failure(args: list[str]) -> str:
    code, report = verify(args)
    assert (code, report["verdict"]) == (EXIT_PLATFORM, "FAILED")
    platform = step(report, "platform")
    assert platform["outcome"] == "fail"
    reason: str = platform["reason"]
    return reason


def test_another_pinned_release_fails(vectors: Path) -> None:
    other = ["--expect-os-image-hash", "11" * 32, "--skip-dcap"]
    reason = platform_failure(["--dstack-quote", str(vectors / LITE), *other])
    assert "not a pinned release" in reason


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"memory_size": 4 * 2**30}, "RTMR0"),
        ({"qemu_version": "9.2.1"}, "MRTD"),
        ({"qemu_single_pass_add_pages": False}, "MRTD"),
    ],
)
def test_a_changed_vm_shape_fails(
    vectors: Path, tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    path = edited(tmp_path, fixture(vectors), **changes)
    for pins in (PINS, ["--skip-dcap"]):
        reason = platform_failure(["--dstack-quote", str(path), *pins])
        assert "does not boot to the quote's registers" in reason
        assert named in reason


def test_a_memory_size_dstack_refuses_leaves_the_release_pin_unchecked(
    vectors: Path, tmp_path: Path
) -> None:
    path = edited(tmp_path, fixture(vectors), memory_size=5 * 2**29)
    reason = platform_failure(["--dstack-quote", str(path), *PINS])
    assert "cannot be checked" in reason
    assert "is refused" in reason


def attached(document: dict[str, Any]) -> tuple[bytes, bytes]:
    files = json.loads(document["vm_config"])["tdx_measurement"]
    return base64.b64decode(files["checksum_file"]), base64.b64decode(files["measurement"])


def with_files(checksum_file: bytes, measurement: bytes) -> dict[str, str]:
    return {
        "checksum_file": base64.b64encode(checksum_file).decode(),
        "measurement": base64.b64encode(measurement).decode(),
    }


def test_one_changed_byte_of_the_cbor_fails(vectors: Path, tmp_path: Path) -> None:
    document = fixture(vectors)
    manifest, cbor = attached(document)
    changed = bytearray(cbor)
    changed[40] ^= 1
    path = edited(tmp_path, document, tdx_measurement=with_files(manifest, bytes(changed)))
    reason = platform_failure(["--dstack-quote", str(path), *PINS])
    assert "sha256sum.txt lists" in reason


def test_a_rebound_cbor_with_its_own_manifest_is_another_release(
    vectors: Path, tmp_path: Path
) -> None:
    document = fixture(vectors)
    _, cbor = attached(document)
    changed = bytearray(cbor)
    changed[40] ^= 1
    manifest = f"{hashlib.sha256(changed).hexdigest()}  measurement.tdx.cbor\n".encode()
    files = with_files(manifest, bytes(changed))
    path = edited(tmp_path, document, tdx_measurement=files)
    reason = platform_failure(["--dstack-quote", str(path), *PINS])
    assert "not the os_image_hash" in reason
    # and naming the new release in vm_config does not help: its registers are not the quote's
    renamed = hashlib.sha256(manifest).hexdigest()
    path = edited(tmp_path, document, tdx_measurement=files, os_image_hash=renamed)
    reason = platform_failure(["--dstack-quote", str(path), "--skip-dcap"])
    assert "does not boot to the quote's registers" in reason


def test_one_changed_byte_of_the_manifest_fails(vectors: Path, tmp_path: Path) -> None:
    document = fixture(vectors)
    manifest, cbor = attached(document)
    files = with_files(manifest + b"\n", cbor)
    path = edited(tmp_path, document, tdx_measurement=files)
    reason = platform_failure(["--dstack-quote", str(path), *PINS])
    assert "not the os_image_hash" in reason


def acpi_policy(tmp_path: Path, loader: bytes, rsdp: bytes, tables: bytes) -> Path:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "format = 1\n[os]\n"
        f'image_hashes = ["{RELEASE}"]\n'
        f'acpi_loader_sha384 = "{loader.hex()}"\n'
        f'acpi_rsdp_sha384 = "{rsdp.hex()}"\n'
        f'acpi_tables_sha384 = "{tables.hex()}"\n'
    )
    return policy


def test_pinned_acpi_digests_are_checked(vectors: Path, tmp_path: Path) -> None:
    events = parse_event_log(fixture(vectors)["event_log"])
    digests = {e.event: e.digest for e in events if e.event.startswith("acpi-")}
    loader, rsdp, tables = digests["acpi-loader"], digests["acpi-rsdp"], digests["acpi-tables"]
    policy = acpi_policy(tmp_path, loader, rsdp, tables)
    _, report = verify(
        ["--dstack-quote", str(vectors / LITE), "--policy", str(policy), "--skip-dcap"]
    )
    assert step(report, "platform")["outcome"] == "pass"
    assert "pins in policy" in step(report, "platform")["reason"]
    policy = acpi_policy(tmp_path, loader, rsdp, bytes(48))
    reason = platform_failure(
        ["--dstack-quote", str(vectors / LITE), "--policy", str(policy), "--skip-dcap"]
    )
    assert "ACPI tables digest" in reason


def test_without_a_document_rtmr3_contradicting_vm_config_is_a_lie(
    vectors: Path, tmp_path: Path
) -> None:
    path = edited(tmp_path, fixture(vectors), tdx_measurement=None)
    reason = platform_failure(["--dstack-quote", str(path), "--skip-dcap"])
    assert "did not boot" in reason


def test_a_release_pin_without_a_document_never_passes(vectors: Path, tmp_path: Path) -> None:
    vm_config = json.loads(fixture(vectors)["vm_config"])
    measured = "07a2388c7a6a1b6a646d443f1517990a4ec294471d63146cda9d56972765051d"
    path = edited(tmp_path, fixture(vectors), tdx_measurement=None, os_image_hash=measured)
    pins = ["--expect-os-image-hash", measured, "--skip-dcap"]
    reason = platform_failure(["--dstack-quote", str(path), *pins])
    assert "cannot be checked" in reason
    assert "no measurement document" in reason
    assert vm_config["tdx_attestation_variant"] == "lite"


def test_a_legacy_declared_boot_needs_acpi_pins(vectors: Path, tmp_path: Path) -> None:
    path = edited(tmp_path, fixture(vectors), tdx_attestation_variant="legacy")
    reason = platform_failure(["--dstack-quote", str(path), *PINS])
    assert "legacy scheme" in reason


def test_write_policy_pins_the_recomputed_release(vectors: Path) -> None:
    document = fixture(vectors)
    evidence = Evidence(
        quote=bytes.fromhex(document["quote"]),
        event_log=document["event_log"],
        vm_config=document["vm_config"],
    )
    verdict = run_steps(evidence, VerifyOptions(at=0, skip_dcap=True), None)
    observed = observed_policy(verdict, Policy())
    assert observed.os_image_hashes == {bytes.fromhex(RELEASE)}
    assert observed.platforms == ()
    assert f'image_hashes = [\n  "{RELEASE}",\n]' in render_policy(observed, "test")


def test_the_policy_reads_release_and_acpi_pins(tmp_path: Path) -> None:
    text = (
        "format = 1\n[os]\n"
        f'image_hashes = ["{RELEASE}"]\n'
        f'acpi_loader_sha384 = "{"11" * 48}"\n'
        f'acpi_rsdp_sha384 = "{"22" * 48}"\n'
        f'acpi_tables_sha384 = "{"33" * 48}"\n'
    )
    policy = parse_policy(text, "test")
    assert policy.os_image_hashes == {bytes.fromhex(RELEASE)}
    assert policy.acpi_digests == {
        "loader": bytes([0x11]) * 48,
        "rsdp": bytes([0x22]) * 48,
        "tables": bytes([0x33]) * 48,
    }
    assert parse_policy(render_policy(policy, "test"), "again").acpi_digests == policy.acpi_digests


@pytest.mark.parametrize(
    ("os_table", "reason"),
    [
        ('image_hashes = ["00"]', "32 bytes"),
        ('image_hashes = "x"', "must be a list"),
        (f'acpi_loader_sha384 = "{"11" * 48}"', "1 of the 3 ACPI digests"),
        (
            'acpi_loader_sha384 = "11"\nacpi_rsdp_sha384 = "11"\nacpi_tables_sha384 = "11"',
            "48 bytes",
        ),
    ],
)
def test_malformed_release_pins_are_policy_errors(os_table: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        parse_policy(f"format = 1\n[os]\n{os_table}\n", "test")


def test_a_release_pin_given_twice_is_an_error(vectors: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'format = 1\n[os]\nimage_hashes = ["{RELEASE}"]\n')
    out = io.StringIO()
    code = run(
        ["--dstack-quote", str(vectors / LITE), "--policy", str(policy), *PINS, "--json"], out
    )
    assert code == 2
    assert json.loads(out.getvalue())["verdict"] == "ERROR"


def test_a_legacy_boot_cannot_check_a_release_pin(vectors: Path) -> None:
    legacy = vectors / "dstack-head/verifier-fixtures/quote-report.json"
    vm_config = json.loads(json.loads(legacy.read_text())["vm_config"])
    pins = ["--expect-os-image-hash", vm_config["os_image_hash"], "--skip-dcap"]
    reason = platform_failure(["--dstack-quote", str(legacy), *pins])
    assert "cannot be checked" in reason
    assert "no measurement document" in reason


def test_a_legacy_declared_boot_is_checked_with_its_acpi_digests_pinned(
    vectors: Path, tmp_path: Path
) -> None:
    events = parse_event_log(fixture(vectors)["event_log"])
    digests = {e.event: e.digest for e in events if e.event.startswith("acpi-")}
    policy = acpi_policy(
        tmp_path, digests["acpi-loader"], digests["acpi-rsdp"], digests["acpi-tables"]
    )
    path = edited(tmp_path, fixture(vectors), tdx_attestation_variant=None)
    _, report = verify(["--dstack-quote", str(path), "--policy", str(policy), "--skip-dcap"])
    assert step(report, "platform")["outcome"] == "pass"


def test_a_recomputed_release_is_named_from_the_table_whatever_rtmr3_says() -> None:
    release = next(iter(os_releases().values()))
    identity = identify_os(b"\x07" * 32, {"os_image_hash": "11" * 32}, release.os_image_hash)
    assert identity.release == release
    assert identity.named_from == RECOMPUTED
    assert release.image in identity.describe()
    with pytest.raises(PlatformMismatch, match="did not boot"):
        identify_os(b"\x07" * 32, {"os_image_hash": "11" * 32}, None)
