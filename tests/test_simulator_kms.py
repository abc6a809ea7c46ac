"""The simulator's KMS boot (dstack @312dc605, 0.6.x) and its lies, in process: the RTMR3
sequence, payloads and Info agree with what dstack-util measures and the verifier's rules read."""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from oauth3.attestation import (
    app_id_without_kms,
    compose_hash,
    parse_event_log,
    parse_quote,
    read_boot_record,
    replay_rtmrs,
)
from oauth3.attestation.dstack_os import release_for
from oauth3.runtime.env_settings import ConfigError
from oauth3.simulator.kms import simulated_kms_id
from oauth3.simulator.mockdcap import MockDcap
from oauth3.simulator.settings import default_app_compose, from_args, parser
from oauth3.simulator.state import CvmVariant, SimulatedCvm, build_cvm

SEED = "kms-test"
DCAP = MockDcap(b"kms-test", datetime(2026, 6, 1, tzinfo=UTC))
KMS_SEQUENCE = [
    "system-preparing",
    "app-id",
    "compose-hash",
    "instance-id",
    "boot-mr-done",
    "os-image-hash",
    "key-provider",
    "storage-fs",
    "system-ready",
]


def boot(**variant: object) -> SimulatedCvm:
    return build_cvm(default_app_compose(), SEED, DCAP.signer, CvmVariant(**variant))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [1, 2])
def test_a_kms_boot_measures_dstacks_sequence_and_payloads(version: int) -> None:
    cvm = boot(kms=True, runtime_event_version=version)
    served = parse_event_log(cvm.event_log("full"))
    record = read_boot_record(served)
    assert record.names == KMS_SEQUENCE
    assert not record.app_events
    assert tuple(replay_rtmrs(served)) == parse_quote(cvm.quote(bytes(64))).report.rtmr
    # os-image-hash is the KMS's answer: the vm_config os_image_hash the guest sent
    assert record.os_image_hash == cvm.os_image_hash
    assert json.loads(cvm.vm_config)["os_image_hash"] == cvm.os_image_hash.hex()
    # key-provider: serde's bytes, the id the KMS root's SubjectPublicKeyInfo
    kms_id = simulated_kms_id(SEED)
    assert record.key_provider == '{"name":"kms","id":"' + kms_id.hex() + '"}'
    assert isinstance(load_der_public_key(kms_id), ec.EllipticCurvePublicKey)
    # the app id the deployment registered, not compose_hash[:20]
    digest = compose_hash(default_app_compose())
    assert record.compose_hash == digest
    assert record.app_id != app_id_without_kms(digest)
    assert len(record.app_id) == 20
    info = cvm.info()
    assert info["app_id"] == record.app_id.hex()
    assert info["key_provider_info"] == record.key_provider


def test_the_kms_id_has_the_shape_of_dstacks_own_vector(vectors: Path) -> None:
    """dstack's 0.5.4 simulator vector is a KMS boot: its key-provider id is a P-256 SPKI too."""
    events = json.loads((vectors / "dstack-v0.5.4-simulator" / "eventlog.json").read_text())
    payload = next(e["event_payload"] for e in events if e.get("event") == "key-provider")
    upstream = json.loads(bytes.fromhex(payload))
    assert list(upstream) == ["name", "id"]
    assert upstream["name"] == "kms"
    ours = simulated_kms_id(SEED)
    assert len(bytes.fromhex(upstream["id"])) == len(ours) == 91
    assert bytes.fromhex(upstream["id"])[:27] == ours[:27]  # the same P-256 SPKI header


def test_without_kms_nothing_changes() -> None:
    cvm = boot()
    record = read_boot_record(cvm.events)
    assert "os-image-hash" not in record.names
    assert record.key_provider == '{"name":"none","id":""}'
    assert record.app_id == app_id_without_kms(cvm.compose_hash)


def test_another_kms_signs_another_key_provider_and_implies_a_kms_boot() -> None:
    record = read_boot_record(boot(attacks=frozenset({"other-kms"})).events)
    assert record.names == KMS_SEQUENCE
    assert record.key_provider is not None
    assert simulated_kms_id(SEED, genuine=False).hex() in record.key_provider
    assert simulated_kms_id(SEED).hex() not in record.key_provider


def test_late_lies_are_app_events_after_system_ready() -> None:
    cvm = boot(attacks=frozenset({"late-key-provider", "late-os-image-hash", "dev-os"}))
    record = read_boot_record(cvm.events)
    assert simulated_kms_id(SEED).hex() not in (record.key_provider or "")
    late = {e.event: e.event_payload for e in record.app_events}
    assert json.loads(late["key-provider"])["id"] == simulated_kms_id(SEED).hex()
    production = release_for(late["os-image-hash"])
    assert production is not None
    assert not production.dev
    # the OS measured the dev image it booted, which a verifier reads
    measured = release_for(record.os_image_hash or b"")
    assert measured is not None
    assert measured.dev


@pytest.mark.parametrize(
    ("argv", "env", "kms"),
    [
        (["--kms"], {}, True),
        ([], {"OAUTH3_SIM_KMS": "1"}, True),
        ([], {"OAUTH3_SIM_KMS": "0"}, False),
        ([], {}, False),
    ],
)
def test_kms_option_and_variable(argv: list[str], env: dict[str, str], kms: bool) -> None:
    args = parser("sim", argparse.ArgumentParser).parse_args(["--socket", "s.sock", *argv])
    assert from_args(args, env).variant.kms is kms


def test_a_bad_kms_variable_is_one_line() -> None:
    args = parser("sim", argparse.ArgumentParser).parse_args(["--socket", "s.sock"])
    with pytest.raises(ConfigError, match="OAUTH3_SIM_KMS must be 1 or 0"):
        from_args(args, {"OAUTH3_SIM_KMS": "yes please"})


def test_the_kms_boot_is_deterministic_per_seed() -> None:
    assert boot(kms=True).rtmrs == boot(kms=True).rtmrs
    other = build_cvm(default_app_compose(), "another seed", DCAP.signer, CvmVariant(kms=True))
    assert other.app_id != boot(kms=True).app_id
    assert (
        hashlib.sha256(simulated_kms_id("another seed")).digest()
        != hashlib.sha256(simulated_kms_id(SEED)).digest()
    )
