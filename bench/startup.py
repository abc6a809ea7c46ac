"""B6: `oauth3-verify` as a whole process (what a user waits for), against a bare interpreter.

Three commands run round after round, in a rotated order so drift on a shared machine falls on
each alike: `python -c pass`, `oauth3-verify --help`, `oauth3-verify --bundle <bundle> ...`.
Each figure is the median of its wall times; the targets are on those medians.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HELP_TARGET_MS = 100.0
BUNDLE_TARGET_MS = 150.0
COMMANDS = ("bare", "help", "bundle")


@dataclass
class B6:
    """Wall times (s) of each command, in the rounds they ran, and where `--bundle`'s imports
    spend their time (module, cumulative µs, from one `python -X importtime` run)."""

    error: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    exit_codes: dict[str, set[int]] = field(default_factory=dict)
    imports: list[tuple[str, int]] = field(default_factory=list)

    def median_ms(self, name: str) -> float:
        """The median wall time of `name`, in ms."""
        return statistics.median(self.times[name]) * 1000


def verify_command() -> list[str]:
    """The installed `oauth3-verify` script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("oauth3-verify")
    return [str(script)] if script.exists() else [sys.executable, "-m", "oauth3.verifier.cli"]


def measure(
    bundle_args: list[str], env: dict[str, str], cwd: Path, rounds: int, timeout: float = 60
) -> B6:
    """Run the three commands `rounds` times each, interleaved and rotated."""
    verify = verify_command()
    commands = {
        "bare": [sys.executable, "-c", "pass"],
        "help": [*verify, "--help"],
        "bundle": [*verify, *bundle_args],
    }
    result = B6(times={name: [] for name in COMMANDS}, exit_codes={n: set() for n in COMMANDS})
    for round_ in range(rounds + 1):  # the first round warms the page cache and is dropped
        order = COMMANDS[round_ % 3 :] + COMMANDS[: round_ % 3]
        for name in order:
            began = time.perf_counter()
            done = subprocess.run(  # noqa: S603 - our own interpreter and script
                commands[name], cwd=cwd, env=env, capture_output=True, check=False, timeout=timeout
            )
            elapsed = time.perf_counter() - began
            if round_:
                result.times[name].append(elapsed)
                result.exit_codes[name].add(done.returncode)
    result.imports = import_profile(bundle_args, env, cwd)
    return result


def import_profile(
    bundle_args: list[str], env: dict[str, str], cwd: Path, top: int = 14
) -> list[tuple[str, int]]:
    """The imports of one whole `--bundle` run with the largest cumulative time: third-party
    packages and oauth3 modules, each once (a package's time includes its submodules')."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-X", "importtime", "-m", "oauth3.verifier.cli", *bundle_args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found: dict[str, int] = {}
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if "." not in name or name.startswith("oauth3."):
            found[name] = max(found.get(name, 0), int(parts[1]))
    return sorted(found.items(), key=lambda item: -item[1])[:top]


def summary_rows(b6: B6) -> list[tuple[str, str, str, str, bool]]:
    """The B6 rows of the summary table."""
    if b6.error or not b6.times.get("bare"):
        return []
    bare = b6.median_ms("bare")
    help_ms, bundle_ms = b6.median_ms("help"), b6.median_ms("bundle")
    return [
        ("B6", "`oauth3-verify --bundle` whole process, median", f"{bundle_ms:.0f} ms",
         f"<= {BUNDLE_TARGET_MS:.0f} ms (bare python {bare:.0f} ms)",
         bundle_ms <= BUNDLE_TARGET_MS),
        ("B6", "`oauth3-verify --help` whole process, median", f"{help_ms:.0f} ms",
         f"<= {HELP_TARGET_MS:.0f} ms", help_ms <= HELP_TARGET_MS),
    ]  # fmt: skip


def section(b6: B6) -> list[str]:
    """The B6 section of BENCHMARKS.md."""
    lines = ["## B6 `oauth3-verify` as a whole process (interleaved with a bare interpreter)", ""]
    if b6.error:
        return [*lines, f"Not measured: {b6.error}."]
    labels = {
        "bare": "bare interpreter (`python -c pass`)",
        "help": "`oauth3-verify --help`",
        "bundle": "`oauth3-verify --bundle <bundle> --allow-simulated --root-ca <root> --json`",
    }
    lines += [
        "| command | median | min | max | over bare (median) | exit codes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    bare = b6.median_ms("bare")
    for name in COMMANDS:
        times = b6.times[name]
        median = b6.median_ms(name)
        codes = ", ".join(str(c) for c in sorted(b6.exit_codes[name]))
        lines.append(
            f"| {labels[name]} | {median:.1f} ms | {min(times) * 1000:.1f} ms | "
            f"{max(times) * 1000:.1f} ms | {median - bare:+.1f} ms | {codes} |"
        )
    rounds = len(b6.times["bare"])
    lines += [
        "",
        f"{rounds} rounds after one dropped warm-up round; each round runs the three commands in "
        "a rotated order. `--help` exits 2 by design; the bundle run gives no pins, so a full "
        "verification ends UNPINNED (3).",
    ]
    if b6.imports:
        lines += [
            "",
            "Where one `--bundle` run spends its import time (one `python -X importtime` run, "
            "which itself adds overhead; cumulative, so a module's figure includes what it "
            "imports):",
            "",
            "| module | cumulative import time |",
            "|---|---:|",
            *(f"| `{name}` | {micros / 1000:.1f} ms |" for name, micros in b6.imports),
        ]
    return lines


def analysis_notes(b6: B6) -> list[str]:
    """Why B6 misses its targets, from this run's times and import profile."""
    if b6.error or not b6.times.get("bare"):
        return []
    bare = b6.median_ms("bare")
    shown = ", ".join(
        f"`{name}` {micros / 1000:.0f} ms"
        for name, micros in b6.imports
        if not name.startswith("oauth3.")
    )
    return [
        f"**B6 start-up.** A bare interpreter took {bare:.0f} ms here, `--help` "
        f"{b6.median_ms('help'):.0f} ms and `--bundle` {b6.median_ms('bundle'):.0f} ms. "
        "`--help` loads no HTTP client, DCAP or quote parser, and an offline `--bundle` loads no "
        "aiohttp and no event loop (tests/test_verifier_online.py checks which modules each path "
        f"loads). What `--bundle` still imports, third-party: {shown or 'nothing listed'}; "
        "cryptography's x509 reads the PCK chain and the CRLs and dcap-qvl verifies the quote, so "
        "both are needed (dcap-qvl's own `__init__` reads its version through "
        "`importlib.metadata`); the rest is our verifier's modules (dataclass creation "
        "dominates) and the editable-install finder a release install does not have. "
        f"The targets assume a 25 ms interpreter; this run's took {bare / 25:.1f}x that.",
        "",
    ]
