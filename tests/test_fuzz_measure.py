"""The fuzz harness of oauth3-measure (issue 22): its inputs (a GetQuote answer, its vm_config
and event log, the --vm-config/--event-log files, an image directory's metadata.json and
sha256sum.txt) made structured-but-wrong, under each output mode, must keep the promises of
tests/fuzzing.check_output; --json failures print the ERROR object, and a --policy-entry is a
policy oauth3-verify reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from oauth3.verifier.policy import parse_policy
from tests.fuzzing import (
    MEASURE_EXITS,
    check_output,
    fuzzed,
    json_text,
    mutated_json,
    odd_text,
    run_measure,
    with_file,
)
from tests.os_image_builders import image_dir_files, sha256sum, write_image_dir

LITE = Path(__file__).parent / "vectors/dstack-head/verifier-fixtures/tdx-lite-getquote.json"
GETQUOTE: dict[str, Any] = json.loads(LITE.read_text())
VM_CONFIG: dict[str, Any] = json.loads(GETQUOTE["vm_config"])
EVENTS: list[Any] = json.loads(GETQUOTE["event_log"])
METADATA: dict[str, Any] = json.loads(image_dir_files()["metadata.json"])
OUTPUTS: list[list[str]] = [["--json"], [], ["--policy-entry"]]
outputs = st.sampled_from(OUTPUTS)
PINS = ["--acpi-loader", "11" * 48, "--acpi-rsdp", "22" * 48, "--acpi-tables", "33" * 48]


@pytest.fixture
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-measure")


def check_measure(result: tuple[int, str, str], output: list[str]) -> None:
    """check_output, plus: a failure under --json prints the ERROR object; a printed
    --policy-entry is a [[platform]] pin oauth3-verify's policy loader accepts."""
    as_json = output == ["--json"]
    document = check_output(result, MEASURE_EXITS, as_json=as_json)
    code, out, _ = result
    event(f"exit {code}")  # --hypothesis-show-statistics shows how many runs reach each code
    if as_json and code != 0:
        assert document is not None, out
        assert document["verdict"] == "ERROR", out
        assert document["error"]
    if output == ["--policy-entry"] and code == 0:
        (pin,) = parse_policy("format = 1\n" + out, "oauth3-measure output").platforms
        assert pin.missing == []


def _getquote_file(files: Path, document: Any) -> str:
    return with_file(files, "q.json", json.dumps(document).encode("utf-8", "surrogatepass"))


@fuzzed
@given(document=json_text(GETQUOTE), output=outputs)
def test_fuzz_measure_getquote_json(files: Path, document: bytes, output: list[str]) -> None:
    path = with_file(files, "q.json", document)
    check_measure(run_measure(["--dstack-quote", path, *output]), output)


@fuzzed
@given(vm_config=mutated_json(VM_CONFIG), output=outputs)
def test_fuzz_measure_vm_configs_in_a_getquote(
    files: Path, vm_config: Any, output: list[str]
) -> None:
    path = _getquote_file(files, {**GETQUOTE, "vm_config": json.dumps(vm_config)})
    check_measure(run_measure(["--dstack-quote", path, *output]), output)


@fuzzed
@given(events=mutated_json(EVENTS), output=outputs)
def test_fuzz_measure_event_logs_in_a_getquote(files: Path, events: Any, output: list[str]) -> None:
    path = _getquote_file(files, {**GETQUOTE, "event_log": json.dumps(events)})
    check_measure(run_measure(["--dstack-quote", path, *output]), output)


@fuzzed
@given(
    vm_config=st.just(GETQUOTE["vm_config"].encode())
    | json_text(VM_CONFIG)
    | json_text(GETQUOTE["vm_config"]),
    events=st.just(GETQUOTE["event_log"].encode()) | json_text(EVENTS),
    output=outputs,
)
def test_fuzz_measure_vm_config_and_event_log_files(
    files: Path, vm_config: bytes, events: bytes, output: list[str]
) -> None:
    args = [
        *("--vm-config", with_file(files, "vm.json", vm_config)),
        *("--event-log", with_file(files, "log.json", events)),
    ]
    check_measure(run_measure([*args, *output]), output)


image_sums = (
    st.none() | st.binary(max_size=120) | odd_text.map(lambda t: t.encode("utf-8", "replace"))
)
odd_versions = odd_text.map(
    lambda v: json.dumps({**METADATA, "version": v}).encode("utf-8", "surrogatepass")
)
VALID_SHAPE = ("2", "2G", "9.1.0")
shapes = st.just(VALID_SHAPE) | st.tuples(
    st.integers(-1, 300).map(str),
    st.sampled_from(["2G", "1G", "3G", "2048M", "0", "16T", "4097M"]),
    st.sampled_from(["9.1.0", "8.2.2", "7.2.0", "10", "x"]),
)
directory_names = odd_text.map(lambda t: t.replace("/", "_").replace("\x00", "_")).filter(
    lambda t: t not in ("", ".", "..")
)


@fuzzed
@given(
    metadata=st.just(image_dir_files()["metadata.json"]) | odd_versions | json_text(METADATA),
    sums=st.booleans() | image_sums,
    shape=shapes,
    name=directory_names,
    pinned=st.booleans(),
    output=outputs,
)
def test_fuzz_measure_image_directories(
    files: Path,
    metadata: bytes,
    sums: bool | bytes | None,
    shape: tuple[str, str, str],
    name: str,
    pinned: bool,
    output: list[str],
) -> None:
    contents = {**image_dir_files(), "metadata.json": metadata}
    if sums is True:
        contents["sha256sum.txt"] = sha256sum(contents)
    elif isinstance(sums, bytes):
        contents["sha256sum.txt"] = sums
    unique = files / str(len(list(files.iterdir())))
    unique.mkdir()
    directory = unique / os.fsdecode(name.encode("utf-8", "surrogatepass"))
    write_image_dir(directory, contents)
    cpus, memory, qemu = shape
    args = ["--image-dir", str(directory), "--cpus", cpus, "--memory", memory]
    args += ["--qemu-version", qemu, *(PINS if pinned else [])]
    check_measure(run_measure([*args, *output]), output)
