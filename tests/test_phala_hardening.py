"""oauth3-phala keeps issue 22's promises on what the fuzz harness (tests/test_fuzz_phala.py)
found, one plain regression test per case."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from oauth3.phala.cli import run
from oauth3.phala.manifest import ManifestError, render

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "phala-app.yaml"


def test_a_manifest_nested_thousands_deep_is_one_line_not_an_internal_error(
    tmp_path: Path,
) -> None:
    """Found by the harness: PyYAML's composer recursed into a RecursionError (internal error)."""
    text = json.dumps({**yaml.safe_load(MANIFEST.read_text()), "name": "DEEP"})
    (tmp_path / "m.yaml").write_text(text.replace('"DEEP"', "[" * 3000 + "]" * 3000))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["render", str(tmp_path / "m.yaml"), "-o", str(tmp_path / "a.json")])
    assert code == 2
    assert err.getvalue().count("\n") == 1
    assert "nests deeper than 64 levels" in err.getvalue()
    assert "internal error" not in err.getvalue()
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("depth", [65, 900])
def test_a_docker_compose_file_nested_too_deep_is_refused(depth: int) -> None:
    document = yaml.safe_load(MANIFEST.read_text())
    document["docker_compose_file"] = "[" * depth + "]" * depth
    with pytest.raises(ManifestError, match="docker_compose_file is not YAML: it nests deeper"):
        render(json.dumps(document).encode())


def _render(tmp_path: Path, text: str, *extra: str) -> tuple[int, str, str]:
    (tmp_path / "m.yaml").write_text(text, errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["render", str(tmp_path / "m.yaml"), "-o", str(tmp_path / "a.json"), *extra])
    return code, out.getvalue(), err.getvalue()


def test_a_lone_surrogate_in_the_manifest_is_one_line_not_an_internal_error(
    tmp_path: Path,
) -> None:
    """Found by the harness: encoding the canonical JSON raised UnicodeEncodeError."""
    document = {**yaml.safe_load(MANIFEST.read_text()), "name": "oauth3\ud800"}
    code, _, err = _render(tmp_path, json.dumps(document))
    assert code == 2
    assert "lone surrogate" in err
    assert "internal error" not in err
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("as_json", [True, False])
def test_render_escapes_what_it_prints(tmp_path: Path, as_json: bool) -> None:
    """Found by the harness: --json printed an unassigned code point (U+D7FC) raw."""
    document = {**yaml.safe_load(MANIFEST.read_text()), "name": "oauth3\ud7fc\x7f\u202e"}
    code, out, _ = _render(tmp_path, json.dumps(document), *(["--json"] if as_json else []))
    assert code == 0
    assert all(line.isprintable() for line in out.splitlines())
    if as_json:
        assert "--name oauth3\ud7fc\x7f\u202e" in json.loads(out)["phala_deploy"]
