"""The import graph of the seven distributions keeps the design card's rules: attestation and the
runtime import nothing of ours, the sidecar at most the runtime, the service, verifier and
simulator the attestation formats (the verifier without the runtime's server code), oauth3-phala
the attestation formats and the verifier (never the other way round), and nothing imports the
service or the sidecar. Checked over every module; the checker is tested too."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# distribution -> the oauth3 packages its modules may import (besides its own)
ALLOWED_IMPORTS: Mapping[str, frozenset[str]] = {
    "attestation": frozenset(),
    "runtime": frozenset(),
    "sidecar": frozenset({"runtime"}),
    "service": frozenset({"attestation", "runtime"}),
    "verifier": frozenset({"attestation"}),
    "phala": frozenset({"attestation", "verifier"}),
    "simulator": frozenset({"attestation", "runtime"}),
}


def oauth3_imports(path: Path) -> set[str]:
    """The oauth3 packages a module imports (`oauth3.X...` -> X), relative imports excluded."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "oauth3" and len(parts) > 1:
                found.add(parts[1])
    return found


def violations(repo: Path, rules: Mapping[str, frozenset[str]]) -> list[str]:
    """Every import that breaks the rules, as `module imports oauth3.X`."""
    broken = []
    for dist, allowed in rules.items():
        package = repo / dist / "src" / "oauth3" / dist
        modules = sorted(package.rglob("*.py"))
        if not modules:
            broken.append(f"{dist}: no modules under {package}")
        for module in modules:
            for imported in sorted(oauth3_imports(module) - allowed - {dist}):
                broken.append(f"{module.relative_to(repo)} imports oauth3.{imported}")
    return broken


def test_the_distributions_keep_the_import_rules() -> None:
    assert violations(REPO, ALLOWED_IMPORTS) == []


def _module(root: Path, dist: str, text: str) -> None:
    package = root / dist / "src" / "oauth3" / dist
    package.mkdir(parents=True, exist_ok=True)
    (package / f"m{len(list(package.iterdir()))}.py").write_text(text)


@pytest.mark.parametrize(
    ("dist", "source", "forbidden"),
    [
        ("sidecar", "from oauth3.attestation import parse_quote\n", "oauth3.attestation"),
        ("sidecar", "import oauth3.service.app\n", "oauth3.service"),
        ("verifier", "from oauth3.runtime.serve import serve\n", "oauth3.runtime"),
        ("attestation", "from oauth3 import runtime\n", "oauth3.runtime"),
        ("simulator", "from oauth3.verifier.policy import Policy\n", "oauth3.verifier"),
        ("verifier", "from oauth3.phala.manifest import render\n", "oauth3.phala"),
        ("phala", "from oauth3.runtime.serve import serve\n", "oauth3.runtime"),
        ("service", "def f():\n    from oauth3.sidecar import app\n", "oauth3.sidecar"),
    ],
)
def test_the_checker_catches_a_forbidden_import(
    tmp_path: Path, dist: str, source: str, forbidden: str
) -> None:
    for name in ALLOWED_IMPORTS:
        _module(tmp_path, name, "from . import x\nimport json\n")
    assert violations(tmp_path, ALLOWED_IMPORTS) == []
    _module(tmp_path, dist, source)
    found = violations(tmp_path, ALLOWED_IMPORTS)
    assert len(found) == 1, found
    assert found[0].endswith(f"imports {forbidden}")


def declared_dependencies(repo: Path, dist: str) -> set[str]:
    """The oauth3 distributions a distribution's pyproject.toml depends on (`oauth3-X` -> X)."""
    document = tomllib.loads((repo / dist / "pyproject.toml").read_text())
    names = {
        re.split(r"[=<>!~ ;\[]", d, maxsplit=1)[0] for d in document["project"]["dependencies"]
    }
    return {n.removeprefix("oauth3-") for n in names if n.startswith("oauth3-")}


def test_packaging_declares_exactly_the_allowed_edges() -> None:
    # what an image or `pip install ./attestation ./verifier` pulls in follows these lines
    for dist, allowed in ALLOWED_IMPORTS.items():
        declared = declared_dependencies(REPO, dist)
        assert declared <= allowed, (dist, declared - allowed)
        used = {
            imported
            for module in (REPO / dist / "src" / "oauth3" / dist).rglob("*.py")
            for imported in oauth3_imports(module) - {dist}
        }
        assert used <= declared, (dist, "imports what it does not declare", used - declared)
    assert declared_dependencies(REPO, "verifier") == {"attestation"}
    assert declared_dependencies(REPO, "phala") == {"attestation", "verifier"}
