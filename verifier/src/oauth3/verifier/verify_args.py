"""The `oauth3-verify` command line: its flags, and how a misuse becomes one line (exit 2).

Kept apart from cli.py so that `--help` loads nothing of what a verification needs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

from oauth3.attestation.tcb import TCB_STATUSES

from .cli_common import ClientArgumentParser
from .errors import VerifierError
from .network_defaults import DEFAULT_PCCS_URL, DEFAULT_TIMEOUT
from .policy import PLATFORM_FIELDS
from .verdict import EXIT_CODES, EXIT_NOT_FRESH, EXIT_PARTIAL, EXIT_UNPINNED, EXIT_USAGE

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PROG = "oauth3-verify"
PLATFORM_FLAGS = {
    "mrtd": "--expect-mrtd",
    "rtmr0": "--expect-rtmr0",
    "rtmr1": "--expect-rtmr1",
    "rtmr2": "--expect-rtmr2",
    "mrseam": "--expect-mrseam",
    "xfam": "--expect-xfam",
    "td_attributes": "--expect-td-attributes",
    "min_tee_tcb_svn": "--min-tee-tcb-svn",
}
EPILOG = (
    f"exit codes: 0 VERIFIED or SIMULATED; {EXIT_UNPINNED} UNPINNED; {EXIT_PARTIAL} PARTIAL; "
    f"{EXIT_NOT_FRESH} NOT_FRESH; "
    + ", ".join(f"{code} {name}" for name, code in sorted(EXIT_CODES.items(), key=lambda i: i[1]))
    + f"; {EXIT_USAGE} usage, I/O or network error, and --help (only a verification exits 0). "
    "Put -- before a URL you did not write yourself. See the README, 'What VERIFIED means'."
)


class UsageError(VerifierError):
    """The command line or a file it names is unusable (exit code 2, one line)."""


def usage_error(message: str) -> NoReturn:
    raise UsageError(message)


class HelpShown(Exception):
    """--help printed the usage: exit 2, since only a verification may exit 0 (a URL argument
    that turns out to be `--help` must not read as a success)."""


class VerifyArgumentParser(ClientArgumentParser):
    json_mode = False

    def error(self, message: str) -> NoReturn:
        """Argument errors become UsageError so --json can still answer in JSON."""
        usage_error(f"error: {message}")

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        """The usage, on stderr under --json: stdout then holds only the JSON answer."""
        super().print_help(sys.stderr if self.json_mode else file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """argparse exits only after --help here (errors go through error())."""
        raise HelpShown


def verify_parser(*, json_mode: bool = False) -> VerifyArgumentParser:
    parser = VerifyArgumentParser(
        prog=PROG,
        allow_abbrev=False,  # `--he` is no --help, `--allow` no --allow-simulated
        description="Verify that an oauth3 service runs this code on genuine Intel TDX hardware.",
        epilog=EPILOG,
    )
    parser.add_argument("url", nargs="?", help="base URL of a running oauth3 service")
    parser.add_argument("--bundle", metavar="FILE", help="verify a saved evidence bundle offline")
    parser.add_argument(
        "--dstack-quote",
        metavar="FILE",
        help="any dstack GetQuote/Tappd response, or a raw/hex quote (no /info, no nonce)",
    )
    parser.add_argument("--event-log", metavar="FILE", help="event log for --dstack-quote")
    parser.add_argument(
        "--evidences",
        metavar="URL",
        help="a custom domain (https://DOMAIN) whose /evidences/ and TLS certificate to check",
    )
    parser.add_argument(
        "--evidences-dir", metavar="DIR", help="saved /evidences/ files (no TLS handshake)"
    )
    parser.add_argument(
        "--domain", help="domain of cert-<DOMAIN>.pem for --evidences-dir (default: the only one)"
    )
    parser.add_argument(
        "--connect-to",
        metavar="HOST:PORT",
        help="for --evidences: connect here instead (SNI and Host stay the URL's domain)",
    )
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="for --evidences: check the TLS chain with this CA"
    )
    parser.add_argument(
        "--nonce", default="auto", help="auto (fresh random, default), none, or 64 hex digits"
    )
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="ask for a quote of its own (oauth3/v1) instead of a place in a batch (oauth3/v2)",
    )
    parser.add_argument("--save-bundle", metavar="FILE", help="save the fetched evidence")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--collateral", metavar="FILE", help="QuoteCollateralV3 JSON file")
    source.add_argument("--pccs", metavar="URL", help=f"PCCS to fetch from ({DEFAULT_PCCS_URL})")
    parser.add_argument(
        "--at", metavar="TIME", help="verify as of RFC 3339 or unix seconds (default: now)"
    )
    pins = parser.add_argument_group("what you accept (or keep it in --policy FILE)")
    pins.add_argument("--policy", metavar="FILE", help="the policy file you keep (TOML)")
    pins.add_argument(
        "--write-policy",
        metavar="FILE",
        help="write what this verification observed as a policy, to review and keep",
    )
    pins.add_argument("--expect-compose-hash", metavar="HEX", action="append", default=[])
    pins.add_argument("--expect-app-id", metavar="HEX", action="append", default=[])
    pins.add_argument(
        "--expect-key-provider",
        metavar="NAME:HEX",
        action="append",
        default=[],
        help="accept this key provider (kms:<root public key hex>, none:, …; repeatable)",
    )
    pins.add_argument(
        "--expect-os-image-hash",
        metavar="HEX",
        action="append",
        default=[],
        help="accept this dstack OS release (repeatable): MRTD and RTMR0-2 are recomputed from "
        "its measurement document",
    )
    for name, flag in PLATFORM_FLAGS.items():
        size = PLATFORM_FIELDS[name]
        pins.add_argument(flag, metavar="HEX", dest=f"pin_{name}", help=f"{size} bytes")
    pins.add_argument(
        "--allow-tcb",
        metavar="STATUS",
        action="append",
        default=[],
        choices=TCB_STATUSES,
        help="also accept this TCB status (repeatable; default only UpToDate)",
    )
    pins.add_argument(
        "--allow-advisory",
        metavar="ID",
        action="append",
        default=[],
        help="accept this Intel advisory on the platform (repeatable; default none)",
    )
    pins.add_argument(
        "--min-tcb-evaluation",
        metavar="N",
        type=int,
        help="refuse collateral from an Intel TCB evaluation older than N",
    )
    pins.add_argument(
        "--allow-dev-os", action="store_true", help="accept dstack dev OS images (root access)"
    )
    pins.add_argument("--allow-simulated", action="store_true", help="accept simulator quotes")
    pins.add_argument(
        "--root-ca", metavar="FILE", help="pinned mock root (DER) for simulator quotes"
    )
    parser.add_argument(
        "--skip-dcap", action="store_true", help="do not check the hardware (verdict PARTIAL)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    parser.json_mode = json_mode
    return parser


def check_usage(args: argparse.Namespace) -> None:
    modes = [
        m
        for m in (args.url, args.bundle, args.dstack_quote, args.evidences, args.evidences_dir)
        if m is not None
    ]
    if len(modes) != 1:
        usage_error(
            "error: give exactly one of URL, --bundle FILE, --dstack-quote FILE, "
            "--evidences URL, --evidences-dir DIR"
        )
    if args.root_ca is not None and not args.allow_simulated:
        usage_error("error: --root-ca is only accepted with --allow-simulated")
    if args.url is None and (args.save_bundle is not None or args.nonce != "auto" or args.no_batch):
        usage_error("error: --nonce, --no-batch and --save-bundle apply to URL mode only")
    if args.event_log is not None and args.dstack_quote is None:
        usage_error("error: --event-log applies to --dstack-quote only")
    if not args.timeout > 0:
        usage_error("error: --timeout must be positive")
    if args.evidences is None and (args.connect_to is not None or args.tls_ca is not None):
        usage_error("error: --connect-to and --tls-ca apply to --evidences only")
    if args.domain is not None and args.evidences_dir is None:
        usage_error("error: --domain applies to --evidences-dir only")
