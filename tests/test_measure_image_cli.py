"""oauth3-measure --image-dir: registers from a release's files, the cbor dstack builds, and
one-line failures with the documented exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oauth3.attestation import parse_event_log
from oauth3.attestation.measurement_document import document_as_vm_config, read_document
from oauth3.attestation.os_image import image_measurement, image_registers
from oauth3.attestation.tdx_registers import (
    AcpiDigests,
    acpi_digests_from_log,
    shape_from_vm_config,
)
from oauth3.verifier.measure import EXIT_CANNOT_COMPUTE, run
from oauth3.verifier.policy import parse_policy
from tests.os_image_builders import as_files, image_dir_files, sha256sum, write_image_dir

LITE = "dstack-head/verifier-fixtures/tdx-lite-getquote.json"
PINS = ["--acpi-loader", "11" * 48, "--acpi-rsdp", "22" * 48, "--acpi-tables", "33" * 48]
ACPI = AcpiDigests(b"\x11" * 48, b"\x22" * 48, b"\x33" * 48, "pinned")


def measure(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return run(argv, out), out.getvalue()


def measure_json(argv: list[str]) -> dict[str, Any]:
    code, text = measure(["--json", *argv])
    assert code == 0
    result: dict[str, Any] = json.loads(text)
    return result


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return write_image_dir(tmp_path / "dstack-0.6.0", image_dir_files())


def test_json_gives_the_file_registers_and_leaves_rtmr0_to_the_acpi_pins(image_dir: Path) -> None:
    printed = measure_json(["--image-dir", str(image_dir), "--cpus", "2", "--memory", "2G"])
    shape = shape_from_vm_config({"memory_size": 2 << 30})
    expected = image_registers(as_files(image_dir_files()), shape, None).as_dict()
    assert printed["rtmr0"] is None
    assert {k: printed[k] for k in ("mrtd", "rtmr1", "rtmr2")} == {
        k: expected[k].hex() for k in ("mrtd", "rtmr1", "rtmr2") if expected[k] is not None
    }
    assert "patched QEMU" in printed["acpi"]
    assert printed["mrtd_candidate"] == "single_pass"  # QEMU 9.1.0 by default
    pinned = measure_json(
        ["--image-dir", str(image_dir), "--cpus", "2", "--memory", "2048M", *PINS]
    )
    with_acpi = image_registers(as_files(image_dir_files()), shape, ACPI).as_dict()
    rtmr0 = with_acpi["rtmr0"]
    assert rtmr0 is not None
    assert pinned["rtmr0"] == rtmr0.hex()
    two_pass = measure_json(
        ["--image-dir", str(image_dir), "--cpus", "2", "--memory", "2G", "--qemu-version", "8.2.2"]
    )
    assert two_pass["mrtd"] != printed["mrtd"]
    assert two_pass["rtmr1"] == printed["rtmr1"]


def test_policy_entry_needs_the_acpi_pins_and_then_is_a_full_platform_pin(image_dir: Path) -> None:
    base = ["--policy-entry", "--image-dir", str(image_dir), "--cpus", "2", "--memory", "2G"]
    code, text = measure(base)
    assert code == EXIT_CANNOT_COMPUTE
    assert text == ""
    code, text = measure([*base, *PINS])
    assert code == 0
    (pin,) = parse_policy("format = 1\n" + text, "test").platforms
    assert pin.missing == []
    assert 'name = "0.6.0, 2 vCPU, 2048 MiB, QEMU 9.1.0"' in text


def test_written_cbor_through_the_document_path_gives_the_same_registers(
    image_dir: Path, tmp_path: Path, vectors: Path
) -> None:
    """image dir -> measurement.tdx.cbor -> vm_config.tdx_measurement -> --vm-config mode."""
    raw = json.loads((vectors / LITE).read_text())
    acpi = acpi_digests_from_log(parse_event_log(raw["event_log"]))
    pins = [
        *("--acpi-loader", acpi.loader.hex(), "--acpi-rsdp", acpi.rsdp.hex()),
        *("--acpi-tables", acpi.tables.hex()),
    ]
    cbor_path = tmp_path / "out" / "measurement.tdx.cbor"
    cbor_path.parent.mkdir()
    for memory, qemu in (("2G", "8.2.2"), ("3G", "9.2.1"), ("64G", "9.2.1")):
        direct = measure_json(
            [
                *("--image-dir", str(image_dir), "--cpus", "2", "--memory", memory),
                *("--qemu-version", qemu, "--write-measurement", str(cbor_path), *pins),
            ]
        )
        cbor = cbor_path.read_bytes()
        assert cbor == image_measurement(as_files(image_dir_files())).to_cbor()
        manifest = sha256sum({**image_dir_files(), "measurement.tdx.cbor": cbor})
        vm_config = {
            "os_image_hash": hashlib.sha256(manifest).hexdigest(),
            "memory_size": direct["memory_size"],
            "qemu_version": qemu,
            "tdx_measurement": document_as_vm_config(read_document(manifest, cbor)),
        }
        (tmp_path / "vm_config.json").write_text(json.dumps(vm_config))
        (tmp_path / "log.json").write_text(raw["event_log"])
        via_document = measure_json(
            [
                "--vm-config",
                str(tmp_path / "vm_config.json"),
                "--event-log",
                str(tmp_path / "log.json"),
            ]
        )
        registers = ("mrtd", "rtmr0", "rtmr1", "rtmr2")
        assert {k: direct[k] for k in registers} == {k: via_document[k] for k in registers}


def test_the_directorys_manifest_names_the_release_and_binds_every_file(
    image_dir: Path,
) -> None:
    contents = image_dir_files()
    cbor = image_measurement(as_files(contents)).to_cbor()
    manifest = sha256sum({**contents, "measurement.tdx.cbor": cbor})
    (image_dir / "measurement.tdx.cbor").write_bytes(cbor)
    (image_dir / "sha256sum.txt").write_bytes(manifest)
    argv = ["--image-dir", str(image_dir), "--cpus", "1", "--memory", "2G"]
    printed = measure_json(argv)
    assert printed["os_image_hash"] == hashlib.sha256(manifest).hexdigest()
    assert printed["release"] is None  # a synthetic image is no published release
    assert printed["shipped_cbor"] == "identical to the computed one"
    (image_dir / "measurement.tdx.cbor").write_bytes(cbor[:-1] + b"\x11")
    (image_dir / "sha256sum.txt").write_bytes(
        sha256sum({**contents, "measurement.tdx.cbor": cbor[:-1] + b"\x11"})
    )
    assert measure_json(argv)["shipped_cbor"] == "differs from the computed one"
    (image_dir / "bzImage").write_bytes(contents["bzImage"] + b"\0")
    code, text = measure(argv)
    assert code == EXIT_CANNOT_COMPUTE
    assert text == ""


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oauth3.verifier.measure", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["--cpus", "2"], 2, "--memory"),
        (["--cpus", "2", "--memory", "2X"], 2, "not a size"),
        (["--cpus", "2", "--memory", "2G", "--acpi-rsdp", "00" * 48], 2, "go together"),
        (["--cpus", "2", "--memory", "2G", "--acpi-rsdp", "00"], 2, "96 hex digits"),
        (["--cpus", "2", "--memory", "2G", "--qemu-version", "7.2.0"], 3, "older than 8.0.0"),
    ],
)
def test_bad_arguments_fail_in_one_line(
    image_dir: Path, argv: list[str], code: int, says: str
) -> None:
    process = run_cli("--image-dir", str(image_dir), *argv)
    assert process.returncode == code, process.stderr
    assert process.stderr.count("\n") == 1
    assert says in process.stderr
    assert "Traceback" not in process.stderr
    assert process.stdout == ""


def test_unreadable_or_malformed_directories_fail_in_one_line(tmp_path: Path) -> None:
    missing = run_cli("--image-dir", str(tmp_path / "nowhere"), "--cpus", "1", "--memory", "2G")
    assert missing.returncode == 2
    assert missing.stderr.startswith("oauth3-measure: cannot read")
    broken = write_image_dir(tmp_path / "broken", {**image_dir_files(), "ovmf.fd": b"\0" * 64})
    process = run_cli("--image-dir", str(broken), "--cpus", "1", "--memory", "2G")
    assert process.returncode == EXIT_CANNOT_COMPUTE
    assert "TDVF" in process.stderr
    assert process.stderr.count("\n") == 1
    process = run_cli("--dstack-quote", str(broken / "metadata.json"), "--cpus", "1")
    assert process.returncode == 2
    assert "--cpus applies to --image-dir only" in process.stderr
