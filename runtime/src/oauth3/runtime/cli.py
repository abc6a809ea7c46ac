"""Command-line plumbing of the servers' console scripts: one-line errors, exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` (no usage block) and exit 2."""
        fail(f"{self.prog}: error: {message}")


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    raise SystemExit(code)
