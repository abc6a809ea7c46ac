"""oauth3-measure keeps issue 22's promises, one regression test per case: what the fuzz harness
(tests/test_fuzz_measure.py) found, strict JSON and bounded size for its JSON inputs, and one place
that turns any failure into a line, its code and (under --json) the ERROR object."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from oauth3.verifier import measure
from oauth3.verifier.measure import EXIT_CANNOT_COMPUTE, MAX_JSON_INPUT, run
from oauth3.verifier.policy import parse_policy
from tests.os_image_builders import image_dir_files, write_image_dir

LITE = "dstack-head/verifier-fixtures/tdx-lite-getquote.json"
SHAPE = ["--cpus", "2", "--memory", "2G"]
PINS = ["--acpi-loader", "11" * 48, "--acpi-rsdp", "22" * 48, "--acpi-tables", "33" * 48]


def _measure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = run(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def _image_with(tmp_path: Path, **metadata: Any) -> Path:
    files = image_dir_files()
    document = {**json.loads(files["metadata.json"]), **metadata}
    return write_image_dir(
        tmp_path / "image", {**files, "metadata.json": json.dumps(document).encode()}
    )


def test_a_control_character_in_the_release_version_is_escaped_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the harness: orjson left DEL (and C1 controls) raw in the --json label."""
    image = _image_with(tmp_path, version="\x7f\x9b2J")
    code, out, _ = _measure(["--json", "--image-dir", str(image), *SHAPE], capsys)
    assert code == 0
    assert out.isascii()
    assert "\x7f" not in out
    assert json.loads(out)["label"].startswith("\x7f\x9b2J, 2 vCPU")


def test_a_policy_entry_cannot_be_broken_or_injected_by_the_release_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = '0.6.0"\n[app]\ncompose_hashes = ["' + "ab" * 32 + '"]\n#\x1b[2J'
    image = _image_with(tmp_path, version=version)
    code, out, _ = _measure(["--policy-entry", "--image-dir", str(image), *SHAPE, *PINS], capsys)
    assert code == 0
    assert all(c.isprintable() for c in out.replace("\n", ""))
    policy = parse_policy("format = 1\n" + out, "oauth3-measure output")
    (pin,) = policy.platforms
    assert pin.name.startswith('0.6.0"\\x0a[app]')
    assert policy.compose_hashes == frozenset()


def test_a_nul_in_a_metadata_file_name_is_cannot_compute_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the harness: open() raised ValueError ("embedded null byte"), an internal error."""
    image = _image_with(tmp_path, kernel="bz\x00Image")
    code, out, err = _measure(["--json", "--image-dir", str(image), *SHAPE], capsys)
    assert code == EXIT_CANNOT_COMPUTE
    assert "NUL" in err
    assert err.count("\n") == 1
    assert json.loads(out) == {
        "verdict": "ERROR",
        "exit_code": EXIT_CANNOT_COMPUTE,
        "error": err.removeprefix("oauth3-measure: ").rstrip("\n"),
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--dstack-quote", "missing.json"],
        ["--vm-config", "vm.json"],
        ["--image-dir", "x", "--memory", "2X"],
        ["--dstack-quote", "q.json", "--cpus", "1"],
    ],
)
def test_usage_errors_under_json_print_the_error_object(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _measure(["--json", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1
    document = json.loads(out)
    assert document["verdict"] == "ERROR"
    assert document["exit_code"] == 2
    assert document["error"] in err


def test_a_fault_of_the_program_is_one_line_and_exit_2(
    vectors: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(vm_config: Any, event_log: str) -> measure.Measured:
        raise KeyError("a bug")

    monkeypatch.setattr(measure, "measure_lite", broken)
    code, out, err = _measure(["--json", "--dstack-quote", str(vectors / LITE)], capsys)
    assert code == 2
    assert err.startswith("oauth3-measure: internal error")
    assert "Traceback" not in err
    assert json.loads(out)["verdict"] == "ERROR"


def test_duplicate_keys_are_refused_in_every_json_input(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads((vectors / LITE).read_text())
    twice = document["vm_config"][:-1] + ', "memory_size": 1}'
    (tmp_path / "q.json").write_text(json.dumps({**document, "vm_config": twice}))
    code, _, err = _measure(["--dstack-quote", str(tmp_path / "q.json")], capsys)
    assert (code, "appears twice" in err) == (EXIT_CANNOT_COMPUTE, True)
    (tmp_path / "vm.json").write_text(document["vm_config"])
    (tmp_path / "log.json").write_text('[{"imr": 0, "imr": 1}]')
    args = ["--vm-config", str(tmp_path / "vm.json"), "--event-log", str(tmp_path / "log.json")]
    code, _, err = _measure(args, capsys)
    assert (code, "appears twice" in err) == (2, True)
    image = write_image_dir(
        tmp_path / "image",
        {**image_dir_files(), "metadata.json": b'{"version": "a", "version": "b"}'},
    )
    code, _, err = _measure(["--image-dir", str(image), *SHAPE], capsys)
    assert (code, "appears twice" in err) == (EXIT_CANNOT_COMPUTE, True)


def test_a_json_input_over_its_bound_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "q.json").write_bytes(b" " * (MAX_JSON_INPUT + 1))
    code, _, err = _measure(["--dstack-quote", str(tmp_path / "q.json")], capsys)
    assert code == 2
    assert f"larger than {MAX_JSON_INPUT} bytes" in err
