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


class ClientArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` (no usage block) and exit 2."""
        fail(f"{self.prog}: error: {message}")


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print one line on stderr, every character that is not printable escaped, and exit with
    `code`."""
    sys.stderr.write(printable(" ".join(message.split())) + "\n")
    raise SystemExit(code)


class InputTooLarge(Exception):
    """An input file or standard input holds more than MAX_INPUT bytes."""


def read_input_bytes(path: str) -> bytes:
    """A file's bytes, or stdin's for `-`; OSError when unreadable, InputTooLarge past
    MAX_INPUT bytes (a FIFO such as `<(cmd)` is read, since the user named it)."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
    else:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise InputTooLarge(f"larger than {MAX_INPUT} bytes")
    return data


def read_input_or_exit(path: str) -> bytes:
    """Read a file's bytes, or stdin's for `-`; an unreadable file, or one over MAX_INPUT bytes,
    is a one-line exit 2."""
    try:
        return read_input_bytes(path)
    except (OSError, InputTooLarge) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
