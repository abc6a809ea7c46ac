"""`oauth3-verify`: check an oauth3 service, a saved bundle, any dstack quote, or a custom
domain's TLS evidences, fail-closed.

Exit codes: 0 VERIFIED (or SIMULATED: --allow-simulated with a pinned mock root, everything else
as for VERIFIED); 3 UNPINNED (consistent, but the app or the platform is not pinned); 4 PARTIAL (a
check skipped); 5 NOT_FRESH (nothing proves the quote is fresh: a bundle, a bare quote, --nonce
none); 10 quote, 11 hardware, 12 tcb_policy, 13 info_binding, 14 nonce, 15 event_log, 16 compose,
17 simulated, 18 evidence_files, 19 evidence_binding, 20 tls_certificate, 21 platform (the first
failing step decides); 2 usage, I/O and network errors.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .errors import VerifierError
from .output import json_text, printable
from .verdict import EXIT_USAGE
from .verify_args import PROG, HelpShown, verify_parser

INTERNAL_ERROR = "internal error (a bug: please report it with the input)"


def _error(message: str, as_json: bool, out: TextIO) -> int:
    line = printable(" ".join(message.split()))
    sys.stderr.write(f"{PROG}: {line}\n")
    if as_json:
        out.write(json_text({"verdict": "ERROR", "exit_code": EXIT_USAGE, "error": line}) + "\n")
    return EXIT_USAGE


def run(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command and return its exit code (usage, I/O, network errors and any fault of its
    own: 2, one line on stderr, and under --json an object with verdict ERROR on stdout)."""
    stream = out if out is not None else sys.stdout
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        args = verify_parser(json_mode=as_json).parse_args(argv)
        from .verify_modes import verify  # noqa: PLC0415 - after parsing: see verify_modes

        return verify(args, stream)
    except HelpShown:
        if as_json:
            stream.write(json_text({"verdict": "ERROR", "exit_code": EXIT_USAGE}) + "\n")
        return EXIT_USAGE
    except VerifierError as exc:
        return _error(str(exc), as_json, stream)
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), as_json, stream)
    except Exception as exc:
        return _error(f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}", as_json, stream)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-verify`."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
