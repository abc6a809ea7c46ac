"""The client-tool fuzz harness's shared parts: a fixed budget and seed database, generators of
structured-but-wrong inputs, the in-process runners, and the one set of output assertions.

Budget: FUZZ_EXAMPLES generated examples per entry point (OAUTH3_FUZZ_EXAMPLES raises it for a
long run), after the recorded ones.
Seed database: tests/fuzz_examples, replayed read-only on every run; OAUTH3_FUZZ_RECORD=1 makes
it writable, so the failing examples of a long run are kept and committed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase, ReadOnlyDatabase

from oauth3.phala import cli as phala_cli
from oauth3.verifier import cli, inspect_cli, measure
from oauth3.verifier.verdict import EXIT_CODES

FUZZ_EXAMPLES = 40
T = TypeVar("T", bound=Callable[..., Any])
Result = tuple[int, str, str]  # exit code, stdout, stderr
FUZZ_DATABASE = Path(__file__).parent / "fuzz_examples"
VERIFY_EXITS = frozenset({0, 2, 3, 4, 5, *EXIT_CODES.values()})
INSPECT_EXITS = frozenset({0, 2})
MEASURE_EXITS = frozenset({0, 2, measure.EXIT_CANNOT_COMPUTE})
PHALA_CHECK_EXITS = frozenset({0, phala_cli.EXIT_NOT_OK, phala_cli.EXIT_USAGE})
PHALA_RENDER_EXITS = frozenset({0, phala_cli.EXIT_USAGE})
ODD_CHARACTERS = ["\x00", "\x1b[2J", "\n", "\u202e", "\ud800", "\x7f", "\u2028", "é", '"', "\\"]


def _database() -> ExampleDatabase:
    recorded = DirectoryBasedExampleDatabase(FUZZ_DATABASE)
    return recorded if os.environ.get("OAUTH3_FUZZ_RECORD") == "1" else ReadOnlyDatabase(recorded)


def fuzzed(test: T) -> T:
    """Decorate a @given test with the harness's budget and recorded database (replayed first,
    read-only unless OAUTH3_FUZZ_RECORD=1). Hypothesis ignores its database under a fixed seed,
    so generation is seeded per run; pytest --hypothesis-seed=N repeats a run exactly."""
    return _fuzz_settings()(test)


def _fuzz_settings() -> settings:
    return settings(
        max_examples=int(os.environ.get("OAUTH3_FUZZ_EXAMPLES", FUZZ_EXAMPLES)),
        deadline=None,
        database=_database(),
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
    )


# ---------------------------------------------------------------- generators


odd_text = st.lists(st.characters() | st.sampled_from(ODD_CHARACTERS), max_size=12).map("".join)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
    | st.sampled_from(["", "00", "0x", "04000200", "=" * 8, "deadbeef" * 9])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if new is _DELETE and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(value[head], rest, new)
        return copy
    items = list(value)
    if new is _DELETE and not rest:
        del items[head]
    else:
        items[head] = _replace(items[head], rest, new)
    return items


_DELETE = object()


@st.composite
def _changed_value(draw: st.DrawFn, old: Any) -> Any:
    if isinstance(old, str) and old and draw(st.booleans()):
        cut = draw(st.integers(0, len(old)))
        return old[:cut] + draw(odd_text) + old[cut + draw(st.integers(0, 3)) :]
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(60, 3000))
        return json.loads("[" * depth + "]" * depth) if depth < 200 else "[" * depth
    return draw(json_values)


@st.composite
def mutated_json(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one to three of its members replaced, retyped, deleted or nested deeply."""
    value = base
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        old: Any = value
        for step in path:
            old = old[step]
        new = _DELETE if path and draw(st.integers(0, 4)) == 0 else draw(_changed_value(old))
        value = _replace(value, path, new)
    return value


@st.composite
def json_text(draw: st.DrawFn, base: Any) -> bytes:
    """A mutated `base` as JSON text, sometimes with a member given twice or the text cut."""
    text = json.dumps(draw(mutated_json(base)), ensure_ascii=draw(st.booleans()))
    choice = draw(st.integers(0, 7))
    if choice == 0 and text.startswith("{") and len(text) > 2:
        first = text[1 : text.index(":")] if ":" in text else '"x"'
        text = "{" + first + ": 1, " + text[1:]
    elif choice == 1:
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- runners and checks


def _in_process(entry: Callable[[list[str], TextIO], int], args: list[str]) -> Result:
    """Run a client tool's `run(argv, out)` in process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry(args, out)
    return code, out.getvalue(), err.getvalue()


def run_verify(args: list[str]) -> Result:
    """oauth3-verify ARGS --json in process: exit code, stdout, stderr."""
    return _in_process(cli.run, [*args, "--json"])


def run_inspect(args: list[str]) -> Result:
    """oauth3-inspect ARGS in process: exit code, stdout, stderr."""
    return _in_process(inspect_cli.run, args)


def run_measure(args: list[str]) -> Result:
    """oauth3-measure ARGS in process: exit code, stdout, stderr."""
    return _in_process(measure.run, args)


def run_phala(args: list[str]) -> Result:
    """oauth3-phala ARGS in process (it prints to sys.stdout): exit code, stdout, stderr."""
    return _in_process(lambda argv, _: phala_cli.run(argv), args)


def _no_control_characters(text: str, where: str) -> None:
    bad = [c for c in text if c != "\n" and not c.isprintable()]
    assert not bad, f"{where} carries {bad[:5]!r}"


def check_output(
    result: tuple[int, str, str], exits: frozenset[int], *, as_json: bool = True
) -> dict[str, Any] | None:
    """The harness's promises: a documented exit code; no traceback and no internal error; an
    error is one line; stdout, when printed, is one JSON object (its exit_code the real one)
    unless the run was without --json (`as_json` False); nothing printed carries a control
    character."""
    code, out, err = result
    assert code in exits, (code, err)
    assert "Traceback" not in err
    assert "internal error" not in err, err
    _no_control_characters(err, "stderr")
    _no_control_characters(out, "stdout")
    if code == 2:
        assert err.count("\n") == 1, err
    if not out:
        assert code != 0, "exit 0 printed nothing"
        return None
    if not as_json:
        return None
    document = json.loads(out)
    assert isinstance(document, dict)
    assert document.get("exit_code", code) == code
    return document


def with_file(directory: Path, name: str, data: bytes) -> str:
    """Write `data` to directory/name and return its path as text."""
    path = directory / name
    path.write_bytes(data)
    return str(path)


Runner = Callable[[list[str]], tuple[int, str, str]]
