"""oauth3-phala in the fuzz harness (issue 22): `check` on a deployed app-compose, saved or inside
a dstack /Info answer, and `render`/`check` on a mutated manifest, must keep the promises of
tests/fuzzing.check_output (render's --json summary must parse too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import event, given

from oauth3.phala.manifest import render
from tests.fuzzing import (
    PHALA_CHECK_EXITS,
    PHALA_RENDER_EXITS,
    check_output,
    fuzzed,
    json_text,
    mutated_json,
    run_phala,
    with_file,
)

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "phala-app.yaml"
OURS: dict[str, Any] = orjson.loads(render(MANIFEST.read_bytes()).app_compose)
INFO: dict[str, Any] = {"app_id": "ab" * 20, "tcb_info": {"app_compose": json.dumps(OURS)}}
MANIFEST_DOCUMENT: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())


@pytest.fixture
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-phala")


def _check(files: Path, deployed: bytes) -> None:
    path = with_file(files, "deployed.json", deployed)
    result = run_phala(["check", str(MANIFEST), path])
    event(f"exit {result[0]}")
    check_output(result, PHALA_CHECK_EXITS, as_json=False)


@fuzzed
@given(deployed=json_text(OURS))
def test_fuzz_phala_check_saved_app_compose(files: Path, deployed: bytes) -> None:
    _check(files, deployed)


@fuzzed
@given(info=json_text(INFO) | json_text({**INFO, "tcb_info": json.dumps(INFO["tcb_info"])}))
def test_fuzz_phala_check_info_answers(files: Path, info: bytes) -> None:
    _check(files, info)


@fuzzed
@given(manifest=mutated_json(MANIFEST_DOCUMENT))
def test_fuzz_phala_render_and_check_manifests(files: Path, manifest: Any) -> None:
    path = with_file(files, "manifest.yaml", json.dumps(manifest).encode("utf-8", "surrogatepass"))
    out = str(files / "app-compose.json")
    rendered = run_phala(
        ["render", path, "-o", out, "--compose-out", str(files / "c.yml"), "--json"]
    )
    event(f"render exit {rendered[0]}")
    check_output(rendered, PHALA_RENDER_EXITS)
    deployed = with_file(files, "deployed.json", json.dumps(OURS).encode())
    checked = run_phala(["check", path, deployed])
    check_output(checked, PHALA_CHECK_EXITS, as_json=False)
