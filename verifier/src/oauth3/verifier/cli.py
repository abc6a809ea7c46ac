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

import argparse
import asyncio
import hashlib
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from oauth3.attestation import AttestationError, load_evidence, parse_nonce
from oauth3.attestation.tcb import TCB_STATUSES

from . import evidences, evidences_fetch
from .bundle import LATEST_TIME, Bundle, load_bundle, parse_time, save_bundle
from .cli_common import ClientArgumentParser, InputTooLarge, read_input_bytes
from .collateral import DEFAULT_PCCS_URL, load_collateral
from .errors import VerifierError
from .files import write_atomically
from .http_client import DEFAULT_TIMEOUT
from .observed import observed_policy_text, written_note
from .output import json_text, printable, render
from .pipeline import CollateralSource, verify_bundle, verify_evidence, verify_url
from .policy import (
    PLATFORM_FIELDS,
    PlatformPin,
    Policy,
    PolicyError,
    key_provider_pin,
    load_policy,
    merge,
    platform_pin,
)
from .step_basics import Evidence, VerifyOptions
from .verdict import (
    EXIT_CODES,
    EXIT_NOT_FRESH,
    EXIT_PARTIAL,
    EXIT_UNPINNED,
    EXIT_USAGE,
    Verdict,
    VerdictName,
    rfc3339,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PROG = "oauth3-verify"
INTERNAL_ERROR = "internal error (a bug: please report it with the input)"
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


def _usage(message: str) -> NoReturn:
    raise UsageError(message)


class HelpShown(Exception):
    """--help printed the usage: exit 2, since only a verification may exit 0 (a URL argument
    that turns out to be `--help` must not read as a success)."""


class _Parser(ClientArgumentParser):
    json_mode = False

    def error(self, message: str) -> NoReturn:
        """Argument errors become UsageError so --json can still answer in JSON."""
        _usage(f"error: {message}")

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        """The usage, on stderr under --json: stdout then holds only the JSON answer."""
        super().print_help(sys.stderr if self.json_mode else file)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """argparse exits only after --help here (errors go through error())."""
        raise HelpShown


def _parser(*, json_mode: bool = False) -> _Parser:
    parser = _Parser(
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


def _read_named_file(path: str) -> bytes:
    """A file's bytes (stdin for `-`), at most 64 MiB; otherwise a one-line usage error."""
    try:
        return read_input_bytes(path)
    except (OSError, InputTooLarge) as exc:
        _usage(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")


def _hex_arg(text: str, option: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        _usage(f"error: {option} is not hex")
    if len(value) != size:
        _usage(f"error: {option} must be {size} bytes of hex")
    return value


def _nonce_arg(text: str) -> bytes | None:
    if text == "auto":
        return secrets.token_bytes(32)
    if text == "none":
        return None
    try:
        return parse_nonce(text)
    except AttestationError as exc:
        _usage(f"error: --nonce: {exc}")


def _time_arg(text: str | None) -> int:
    if text is None or text == "now":
        return int(time.time())
    try:
        moment = parse_time(text)
    except (ValueError, OverflowError):
        _usage(f"error: --at {text!r} is neither RFC 3339 nor unix seconds")
    if not 0 <= moment <= LATEST_TIME:
        _usage(f"error: --at {text!r} is outside 1970..9999")
    return moment


def _policy(args: argparse.Namespace) -> Policy:
    base = load_policy(Path(args.policy)) if args.policy else Policy()
    platform_values = {
        name: getattr(args, f"pin_{name}")
        for name in PLATFORM_FLAGS
        if getattr(args, f"pin_{name}") is not None
    }
    platforms: tuple[PlatformPin, ...] = ()
    if platform_values:
        for name, value in platform_values.items():
            _hex_arg(value, PLATFORM_FLAGS[name], PLATFORM_FIELDS[name])
        platforms = (platform_pin(platform_values, "flags", name="given by flags"),)
    try:
        key_providers = frozenset(
            key_provider_pin(text, "--expect-key-provider") for text in args.expect_key_provider
        )
    except PolicyError as exc:
        _usage(f"error: {exc}")
    pinned_by_flags = bool(
        platforms
        or args.expect_compose_hash
        or args.expect_app_id
        or args.expect_os_image_hash
        or key_providers
    )
    policy = merge(
        base,
        compose_hashes=frozenset(
            _hex_arg(h, "--expect-compose-hash", 32) for h in args.expect_compose_hash
        ),
        app_ids=frozenset(_hex_arg(h, "--expect-app-id", 20) for h in args.expect_app_id),
        key_providers=key_providers,
        platforms=platforms,
        os_image_hashes=frozenset(
            _hex_arg(h, "--expect-os-image-hash", 32) for h in args.expect_os_image_hash
        ),
        allowed_tcb=frozenset(args.allow_tcb),
        allowed_advisories=frozenset(args.allow_advisory),
        min_tcb_evaluation=args.min_tcb_evaluation,
        allow_dev_os=args.allow_dev_os,
    )
    if args.policy and pinned_by_flags:
        return replace(policy, source=f"{base.source} and flags")
    return policy


def _check_usage(args: argparse.Namespace) -> None:
    modes = [
        m
        for m in (args.url, args.bundle, args.dstack_quote, args.evidences, args.evidences_dir)
        if m is not None
    ]
    if len(modes) != 1:
        _usage(
            "error: give exactly one of URL, --bundle FILE, --dstack-quote FILE, "
            "--evidences URL, --evidences-dir DIR"
        )
    if args.root_ca is not None and not args.allow_simulated:
        _usage("error: --root-ca is only accepted with --allow-simulated")
    if args.url is None and (args.save_bundle is not None or args.nonce != "auto" or args.no_batch):
        _usage("error: --nonce, --no-batch and --save-bundle apply to URL mode only")
    if args.event_log is not None and args.dstack_quote is None:
        _usage("error: --event-log applies to --dstack-quote only")
    if not args.timeout > 0:
        _usage("error: --timeout must be positive")
    if args.evidences is None and (args.connect_to is not None or args.tls_ca is not None):
        _usage("error: --connect-to and --tls-ca apply to --evidences only")
    if args.domain is not None and args.evidences_dir is None:
        _usage("error: --domain applies to --evidences-dir only")


def _options(args: argparse.Namespace) -> VerifyOptions:
    policy = _policy(args)
    root = _read_named_file(args.root_ca) if args.root_ca else None
    pin = policy.simulated_root_sha256
    if root is not None and pin is not None and hashlib.sha256(root).digest() != pin:
        _usage(f"error: --root-ca is not the root pinned by {policy.source}")
    return VerifyOptions(
        at=_time_arg(args.at),
        policy=policy,
        allow_simulated=args.allow_simulated,
        root_ca_der=root,
        skip_dcap=args.skip_dcap,
    )


def _write_policy(path: str, verdict: Verdict, options: VerifyOptions, subject: str) -> str:
    if verdict.verdict is VerdictName.FAILED:
        return f"policy NOT written to {path}: the verification failed"
    if not verdict.hardware_checked:
        return f"policy NOT written to {path}: the hardware was not checked"
    text = observed_policy_text(
        verdict, options.policy, f"{subject} at {rfc3339(int(time.time()))}"
    )
    try:
        write_atomically(Path(path), text.encode())
    except OSError as exc:
        _usage(f"cannot write {path}: {exc.strerror or exc}")
    return written_note(path, verdict)


def _report(
    verdict: Verdict, subject: str, args: argparse.Namespace, out: TextIO, notes: list[str]
) -> int:
    if args.json:
        doc: dict[str, Any] = {"subject": subject, **verdict.as_json(), "notes": notes}
        out.write(json_text(doc) + "\n")
    else:
        out.write(render(verdict, subject, notes, PROG))
    return verdict.exit_code


def _run(argv: list[str] | None, out: TextIO, as_json: bool) -> int:
    args = _parser(json_mode=as_json).parse_args(argv)
    _check_usage(args)
    options = _options(args)
    collateral = load_collateral(_read_named_file(args.collateral)) if args.collateral else None
    source = CollateralSource(
        collateral=collateral,
        pccs_url=args.pccs or DEFAULT_PCCS_URL,
        pccs_given=args.pccs is not None,
    )
    notes: list[str] = []
    if args.evidences is not None or args.evidences_dir is not None:
        verdict, subject, notes = _run_evidences(args, options, source)
    elif args.url is not None:
        nonce = _nonce_arg(args.nonce)
        verdict, fetched = asyncio.run(
            verify_url(
                args.url,
                options,
                source,
                nonce=nonce,
                batch=not args.no_batch,
                request_timeout=args.timeout,
            )
        )
        if args.save_bundle is not None:
            try:
                save_bundle(Path(args.save_bundle), fetched)
            except OSError as exc:
                _usage(f"cannot write {args.save_bundle}: {exc.strerror or exc}")
            notes.append(f"evidence saved to {args.save_bundle}")
        shown = f"nonce {nonce.hex()}" if nonce is not None else "no nonce"
        subject = f"{args.url} ({shown})"
    elif args.bundle is not None:
        bundle: Bundle = load_bundle(_read_named_file(args.bundle))
        checking = verify_bundle(bundle, options, source, request_timeout=args.timeout)
        verdict, _ = asyncio.run(checking)
        subject = f"bundle {args.bundle} from {bundle.url}"
        notes.append(
            f"offline: evidence fetched at {rfc3339(bundle.fetched_at)} by the bundle's own "
            f"account, checked as of {rfc3339(options.at)}; freshness is not established"
        )
    else:
        loaded = load_evidence(_read_named_file(args.dstack_quote))
        event_log = loaded.event_log
        if args.event_log is not None:
            event_log = _read_named_file(args.event_log).decode("utf-8", "replace")
        vm_config = loaded.document.get("vm_config") if loaded.document is not None else None
        evidence = Evidence(
            quote=loaded.quote,
            event_log=event_log,
            origin="quote_file",
            vm_config=vm_config if isinstance(vm_config, str) else None,
        )
        checking_quote = verify_evidence(evidence, options, source, request_timeout=args.timeout)
        verdict, _ = asyncio.run(checking_quote)
        subject = f"{loaded.kind} {args.dstack_quote}"
    if args.write_policy is not None:
        notes.append(_write_policy(args.write_policy, verdict, options, subject))
    return _report(verdict, subject, args, out, notes)


def _run_evidences(
    args: argparse.Namespace, options: VerifyOptions, source: CollateralSource
) -> tuple[Verdict, str, list[str]]:
    found = evidences_fetch.obtain_evidences(
        args.evidences,
        args.evidences_dir,
        domain=args.domain,
        connect_to=args.connect_to,
        ca_file=args.tls_ca,
        request_timeout=args.timeout,
    )
    checking = evidences.verify_evidences(found, options, source, request_timeout=args.timeout)
    verdict = asyncio.run(checking)
    return verdict, f"evidences {found.source} for {found.domain}", evidences.notes(found)


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
        return _run(argv, stream, as_json)
    except HelpShown:
        if as_json:
            stream.write(json_text({"verdict": "ERROR", "exit_code": EXIT_USAGE}) + "\n")
        return EXIT_USAGE
    except (VerifierError, AttestationError) as exc:  # ours, and a file that is no quote
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
