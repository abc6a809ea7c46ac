"""The shape rules of STYLE.md over every product module (`*/src/oauth3/**`): no two classes share
a name, no module is named like a standard-library module, no function is longer than 60 lines
(argument-parser builders aside) and no module longer than 500 lines. The checkers are tested on
small sources too, so a rule that silently stopped looking would fail here."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500


def product_modules(root: Path = REPO) -> list[Path]:
    """Every Python module of every distribution's `src/oauth3` tree, in a stable order."""
    return sorted(path for path in root.glob("*/src/oauth3/**/*.py") if ".venv" not in path.parts)


def is_parser_builder(name: str) -> bool:
    """The one exemption from the length rule: a function that builds an argparse parser, named
    so (`parser`, `_parser`, `build_parser`, `_verify_parser`, ...)."""
    return name == "parser" or name.endswith("_parser")


def class_names(source: str) -> list[str]:
    """The names of the classes a module defines, at any depth."""
    return [n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of each function longer than MAX_FUNCTION_LINES, decorators included,
    argparse builders excepted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - first + 1
            if lines > MAX_FUNCTION_LINES and not is_parser_builder(node.name):
                found.append((node.name, lines))
    return found


def shared_class_names(modules: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Class name -> the modules defining it, for names defined more than once."""
    where: dict[str, list[str]] = defaultdict(list)
    for label, source in modules:
        for name in class_names(source):
            where[name].append(label)
    return {name: labels for name, labels in sorted(where.items()) if len(labels) > 1}


def _label(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_there_are_product_modules_to_check() -> None:
    modules = product_modules()
    assert len(modules) > 50
    assert {p.parts[len(REPO.parts)] for p in modules} >= {"attestation", "verifier", "phala"}


def test_no_two_product_classes_share_a_name() -> None:
    sources = [(_label(p), p.read_text()) for p in product_modules()]
    assert shared_class_names(sources) == {}


def test_no_product_module_is_named_like_a_standard_library_module() -> None:
    shadowing = [_label(p) for p in product_modules() if p.stem in sys.stdlib_module_names]
    assert shadowing == []


def test_no_product_function_is_longer_than_60_lines() -> None:
    offenders = {
        f"{_label(p)}:{name}": lines
        for p in product_modules()
        for name, lines in long_functions(p.read_text())
    }
    assert offenders == {}


def test_no_product_module_is_longer_than_500_lines() -> None:
    offenders = {
        _label(p): n
        for p in product_modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert offenders == {}


def test_the_checkers_find_what_they_look_for(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    source = f"def short():\n    pass\n\n\ndef too_long():\n{body}\n    return x0\n"
    source += f"\n\ndef build_parser():\n{body}\n    return x0\n"
    indented = body.replace("    ", "        ")
    source += f"\n\nclass Box:\n    @staticmethod\n    def method():\n{indented}\n"
    assert long_functions(source) == [("too_long", 62), ("method", 62)]
    assert shared_class_names([("a", "class Box: pass"), ("b", "class _Box: pass")]) == {}
    assert shared_class_names([("a", "class _R: pass"), ("b", "def f():\n class _R: pass")]) == {
        "_R": ["a", "b"]
    }
    (tmp_path / "pkg" / "src" / "oauth3" / "pkg").mkdir(parents=True)
    (tmp_path / "pkg" / "src" / "oauth3" / "pkg" / "platform.py").write_text("")
    assert [p.stem for p in product_modules(tmp_path)] == ["platform"]
    assert "platform" in sys.stdlib_module_names
    assert is_parser_builder("_parser")
    assert not is_parser_builder("parse")
