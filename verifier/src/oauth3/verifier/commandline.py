"""Command-line plumbing of the client tools (oauth3-verify, -inspect, -phala): one-line errors.

The servers keep their own copy in oauth3.runtime.cli: the verifier installs without the runtime.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .output import printable

USAGE_ERROR = 2
MAX_INPUT = 64 << 20  # every input these tools read is kilobytes; /dev/zero is not one


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` (no usage block) and exit 2."""
        fail(f"{self.prog}: error: {message}")


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print one line on stderr, every character that is not printable escaped, and exit with
    `code`."""
    sys.stderr.write(printable(" ".join(message.split())) + "\n")
    raise SystemExit(code)


def read_input(path: str) -> bytes:
    """Read a file's bytes, or stdin's for `-`; an unreadable file, or one over MAX_INPUT bytes,
    is a one-line exit 2."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_INPUT + 1)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    if len(data) > MAX_INPUT:
        fail(f"cannot read {path}: larger than {MAX_INPUT} bytes")
    return data
