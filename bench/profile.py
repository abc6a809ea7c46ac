"""py-spy samples of a server under load, summarised: where its time goes, by part and by
function (the profile BENCHMARKS.md shows for a missed target)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 500
# a frame reads "function (path/to/file.py:line)"; py-spy shortens paths to the package
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
# the first rule whose file pattern matches a frame (innermost first) names the sample's part;
# py-spy names our files by distribution directory and module (runtime/logs.py, service/app.py)
_OURS = r"(oauth3|attestation|runtime|service|sidecar|simulator)/"
PARTS: tuple[tuple[str, str], ...] = (
    (
        "log lines (structlog, timestamp, redaction, orjson, buffer)",
        r"(^|/)(structlog/|orjson|(oauth3/)?runtime/(logs|logbuffer|stdlogs)\.py)",
    ),
    ("metrics", r"(^|/)(prometheus_client/|(oauth3/)?(runtime|service|sidecar)/metrics\.py)"),
    ("oauth3 request bookkeeping and handlers", rf"(^|/){_OURS}"),
    ("aiohttp (parser, routing, response)", r"^(aiohttp|multidict|yarl|propcache)/"),
    ("event loop and sockets (asyncio)", r"^(asyncio/|selectors)"),
)
OTHER = "other"


def py_spy() -> str | None:
    """py-spy next to this interpreter (installed with the test extra), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(spy: str, pid: int, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` for `seconds` without pausing it; collapsed stacks go to `output`."""
    return subprocess.Popen(  # noqa: S603 - py-spy from our venv, arguments we built
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(SAMPLE_RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        if match:
            frames.append((match["function"], match["file"]))
    return frames


@dataclass
class Profile:
    """Samples of one process: by part (innermost matching frame) and by function."""

    samples: int = 0
    by_part: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    def share(self, counter: Counter[str], key: str) -> float:
        """Fraction of all samples."""
        return counter[key] / self.samples if self.samples else 0.0


def summarise(raw: str) -> Profile:
    """Read py-spy's raw output (one collapsed stack and its count per line)."""
    profile = Profile()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        profile.samples += count
        profile.by_part[_part(frames)] += count
        function, file = frames[-1]
        profile.self_time[f"{function} ({file})"] += count
        for name in {f"{function} ({file})" for function, file in frames}:
            profile.inclusive[name] += count
    return profile


def _part(frames: list[tuple[str, str]]) -> str:
    for _, file in reversed(frames):
        for part, pattern in PARTS:
            if re.search(pattern, file):
                return part
    return OTHER
