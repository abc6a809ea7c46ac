"""oauth3-measure: computes exactly a genuine quote's four registers from its OS release, prints
a policy entry oauth3-verify accepts, and fails in one line with its documented exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from oauth3.attestation import parse_event_log, parse_quote
from oauth3.verifier.measure import EXIT_CANNOT_COMPUTE, run
from oauth3.verifier.policy import parse_policy

LITE = "dstack-head/verifier-fixtures/tdx-lite-getquote.json"
LEGACY = "dstack-head/verifier-fixtures/quote-report.json"


def test_json_prints_exactly_the_quotes_four_registers(vectors: Path) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "oauth3.verifier.measure",
            "--json",
            "--dstack-quote",
            str(vectors / LITE),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    printed = json.loads(process.stdout)
    report = parse_quote(bytes.fromhex(json.loads((vectors / LITE).read_text())["quote"])).report
    assert {k: printed[k] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")} == {
        "mrtd": report.mr_td.hex(),
        "rtmr0": report.rtmr[0].hex(),
        "rtmr1": report.rtmr[1].hex(),
        "rtmr2": report.rtmr[2].hex(),
    }
    assert printed["os_image_hash"].startswith("e6f5cfec")
    assert printed["acpi"]["source"] == "event log (ACPI contents not verified)"


def test_the_policy_entry_is_a_platform_pin_for_this_quote(vectors: Path) -> None:
    out = io.StringIO()
    assert run(["--policy-entry", "--dstack-quote", str(vectors / LITE)], out) == 0
    policy = parse_policy("format = 1\n" + out.getvalue(), "test")
    report = parse_quote(bytes.fromhex(json.loads((vectors / LITE).read_text())["quote"])).report
    measured = {"mrtd": report.mr_td, **{f"rtmr{i}": report.rtmr[i] for i in range(3)}}
    (pin,) = policy.platforms
    assert pin.mismatches(measured) == []
    assert pin.missing == []


def test_vm_config_and_event_log_files_give_the_same_registers(
    vectors: Path, tmp_path: Path
) -> None:
    document = json.loads((vectors / LITE).read_text())
    (tmp_path / "vm.json").write_text(document["vm_config"])
    (tmp_path / "log.json").write_text(document["event_log"])
    via_files, via_quote = io.StringIO(), io.StringIO()
    args = ["--vm-config", str(tmp_path / "vm.json"), "--event-log", str(tmp_path / "log.json")]
    assert run(["--json", *args], via_files) == 0
    assert run(["--json", "--dstack-quote", str(vectors / LITE)], via_quote) == 0
    assert via_files.getvalue() == via_quote.getvalue()


def test_a_legacy_boot_cannot_be_computed(
    vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--dstack-quote", str(vectors / LEGACY)], io.StringIO()) == EXIT_CANNOT_COMPUTE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no measurement document" in err


def test_a_refused_memory_size_cannot_be_computed(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads((vectors / LITE).read_text())
    vm_config = json.loads(document["vm_config"])
    vm_config["memory_size"] = 2**30
    path = tmp_path / "q.json"
    path.write_text(json.dumps({**document, "vm_config": json.dumps(vm_config)}))
    assert run(["--dstack-quote", str(path)], io.StringIO()) == EXIT_CANNOT_COMPUTE
    assert "is refused" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--dstack-quote", "missing.json"],
        ["--vm-config", "vm.json"],
        ["--dstack-quote", "q.json", "--event-log", "log.json"],
        ["--json", "--policy-entry", "--dstack-quote", "q.json"],
        ["--dstack-quote", "not-evidence.json"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vm.json").write_text("{}")
    (tmp_path / "not-evidence.json").write_text("hello")
    assert run(args, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "code"),
    [('"not json"', 2), ("[1, 2]", EXIT_CANNOT_COMPUTE), ("{broken", 2), ('{"a":1,"a":2}', 2)],
)
def test_a_vm_config_file_that_is_not_an_object_is_refused_in_one_line(
    content: str, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "vm.json").write_text(content)
    (tmp_path / "log.json").write_text("[]")
    args = ["--vm-config", str(tmp_path / "vm.json"), "--event-log", str(tmp_path / "log.json")]
    assert run(args, io.StringIO()) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_the_text_output_names_each_register_and_where_acpi_came_from(vectors: Path) -> None:
    out = io.StringIO()
    assert run(["--dstack-quote", str(vectors / LITE)], out) == 0
    lines = dict(line.split(None, 1) for line in out.getvalue().splitlines())
    report = parse_quote(bytes.fromhex(json.loads((vectors / LITE).read_text())["quote"])).report
    assert lines["mrtd"] == report.mr_td.hex()
    assert lines["rtmr0"] == report.rtmr[0].hex()
    assert lines["acpi-tables"] == next(
        e.digest.hex()
        for e in parse_event_log(json.loads((vectors / LITE).read_text())["event_log"])
        if e.event == "acpi-tables"
    )
