"""`oauth3-verify`: check an oauth3 service, a saved bundle, any dstack quote, or a custom
domain's TLS evidences, fail-closed.

Exit codes: 0 verified (also SIMULATED with --allow-simulated, and PARTIAL with --skip-dcap or
saved evidences); 10 quote, 11 hardware, 12 tcb_policy, 13 info_binding, 14 nonce, 15 event_log,
16 compose, 17 simulated, 18 evidence_files, 19 evidence_binding, 20 tls_certificate (the first
failing step decides); 2 usage, I/O and network errors.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import TextIO

import orjson

from oauth3.attestation import AttestationError, load_evidence, parse_nonce
from oauth3.attestation.tcb import TCB_STATUSES
from oauth3.cli import OneLineParser, fail

from . import evidences, steps
from .bundle import Bundle, BundleError, load_bundle, parse_time, save_bundle
from .collateral import DEFAULT_PCCS_URL, CollateralError, load_collateral
from .fetch import (
    DEFAULT_TIMEOUT,
    CollateralSource,
    FetchError,
    client_session,
    obtain_collateral,
    verify_bundle,
    verify_url,
)
from .steps import Evidence, Outcome, Policy, Verdict

PROG = "oauth3-verify"
MARKS = {
    Outcome.PASS: "✓",
    Outcome.FAIL: "✗",
    Outcome.SKIPPED: "!",
    Outcome.NOT_APPLICABLE: "-",
}
EPILOG = (
    "exit codes: 0 verified (SIMULATED with --allow-simulated, PARTIAL with --skip-dcap "
    "or --evidences-dir); "
    + ", ".join(f"{code} {name}" for name, code in steps.EXIT_CODES.items())
    + "; 2 usage, I/O or network error. --evidences: the files are fetched without checking the "
    "web-PKI chain unless --tls-ca is given; they are authenticated by the quote, and "
    "tls_certificate checks that the domain serves the quoted certificate."
)


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Verify that an oauth3 service runs this code on genuine Intel TDX hardware.",
        epilog=EPILOG,
    )
    parser.add_argument("url", nargs="?", help="base URL of a running oauth3 service")
    parser.add_argument("--bundle", metavar="FILE", help="verify a saved evidence bundle offline")
    parser.add_argument(
        "--dstack-quote",
        metavar="FILE",
        help="any dstack GetQuote/Tappd response, or a raw/hex quote (hardware + event log only)",
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
    parser.add_argument("--save-bundle", metavar="FILE", help="save the fetched evidence")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--collateral", metavar="FILE", help="QuoteCollateralV3 JSON file")
    source.add_argument("--pccs", metavar="URL", help=f"PCCS to fetch from ({DEFAULT_PCCS_URL})")
    parser.add_argument(
        "--at", metavar="TIME", help="verify as of RFC 3339 or unix seconds (default now)"
    )
    parser.add_argument(
        "--allow-tcb",
        metavar="STATUS",
        action="append",
        default=[],
        choices=TCB_STATUSES,
        help="also accept this TCB status (repeatable; default only UpToDate)",
    )
    parser.add_argument("--expect-compose-hash", metavar="HEX")
    parser.add_argument("--expect-app-id", metavar="HEX")
    parser.add_argument("--allow-simulated", action="store_true", help="accept simulator quotes")
    parser.add_argument("--root-ca", metavar="FILE", help="pinned root (DER) for simulator quotes")
    parser.add_argument(
        "--skip-dcap", action="store_true", help="do not check the hardware (verdict PARTIAL)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    return parser


def read_input(path: str) -> bytes:
    """A file's bytes (stdin for `-`); unreadable is a one-line exit 2 naming the program."""
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        fail(f"{PROG}: cannot read {path}: {exc.strerror or exc}")


def _hex_arg(text: str | None, option: str, size: int | None = None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        fail(f"{PROG}: error: {option} is not hex")
    if not value or (size is not None and len(value) != size):
        fail(f"{PROG}: error: {option} must be {size or 'some'} bytes of hex")
    return value


def _nonce_arg(text: str) -> bytes | None:
    if text == "auto":
        return secrets.token_bytes(32)
    if text == "none":
        return None
    try:
        return parse_nonce(text)
    except AttestationError as exc:
        fail(f"{PROG}: error: --nonce: {exc}")


def _time_arg(text: str | None, default: int) -> int:
    if text is None:
        return default
    if text == "now":
        return int(time.time())
    try:
        return parse_time(text)
    except ValueError:
        fail(f"{PROG}: error: --at {text!r} is neither RFC 3339 nor unix seconds")


def _render(verdict: Verdict, subject: str, notes: list[str]) -> str:
    width = max(len(s.name) for s in verdict.steps)
    lines = [f"{PROG}: {subject}"]
    lines += [f"  ! {note}" for note in notes]
    lines += [f"  {MARKS[s.outcome]} {s.name:<{width}}  {s.reason}" for s in verdict.steps]
    for label, value in (
        ("report_data", steps.hex_or_none(verdict.report_data)),
        ("compose_hash", steps.hex_or_none(verdict.compose_hash)),
        ("app_id", steps.hex_or_none(verdict.app_id)),
        ("tcb_status", verdict.tcb_status),
    ):
        if value is not None:
            lines.append(f"  {label:<13} {value}")
    failure = verdict.first_failure
    if failure is not None:
        lines.append(f"FAILED at {failure.name} (exit {verdict.exit_code})")
    else:
        if verdict.simulated:
            lines.append("SIMULATED: not Intel hardware; accepted because of --allow-simulated")
        if not verdict.hardware_checked:
            lines.append("PARTIAL: hardware not checked (--skip-dcap)")
        if steps.EvidenceStep.TLS_CERTIFICATE in verdict.skipped:
            lines.append("PARTIAL: the certificate the domain serves was not checked")
        if verdict.verdict == "VERIFIED":
            lines.append("VERIFIED")
    return "\n".join(lines) + "\n"


def _report(
    verdict: Verdict, subject: str, as_json: bool, out: TextIO, notes: list[str] | None = None
) -> int:
    if as_json:
        doc = {"subject": subject, **verdict.as_json()}
        if notes is not None:
            doc["notes"] = notes
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(_render(verdict, subject, notes or []))
    return verdict.exit_code


async def _verify_quote_file(
    evidence: Evidence, policy: Policy, source: CollateralSource, request_timeout: float
) -> Verdict:
    async with client_session(request_timeout) as session:
        collateral = await obtain_collateral(session, source, evidence, policy)
    return steps.verify_evidence(evidence, policy, collateral)


def _run(argv: list[str] | None, out: TextIO) -> int:
    args = _parser().parse_args(argv)
    modes = [
        m
        for m in (args.url, args.bundle, args.dstack_quote, args.evidences, args.evidences_dir)
        if m is not None
    ]
    if len(modes) != 1:
        fail(
            f"{PROG}: error: give exactly one of URL, --bundle FILE, --dstack-quote FILE, "
            "--evidences URL, --evidences-dir DIR"
        )
    if args.root_ca is not None and not args.allow_simulated:
        fail(f"{PROG}: error: --root-ca is only accepted with --allow-simulated")
    if args.url is None and (args.save_bundle is not None or args.nonce != "auto"):
        fail(f"{PROG}: error: --nonce and --save-bundle apply to URL mode only")
    if args.event_log is not None and args.dstack_quote is None:
        fail(f"{PROG}: error: --event-log applies to --dstack-quote only")
    if not args.timeout > 0:
        fail(f"{PROG}: error: --timeout must be positive")
    if args.evidences is None and (args.connect_to is not None or args.tls_ca is not None):
        fail(f"{PROG}: error: --connect-to and --tls-ca apply to --evidences only")
    if args.domain is not None and args.evidences_dir is None:
        fail(f"{PROG}: error: --domain applies to --evidences-dir only")

    collateral = load_collateral(read_input(args.collateral)) if args.collateral else None
    source = CollateralSource(
        collateral=collateral,
        pccs_url=args.pccs or DEFAULT_PCCS_URL,
        pccs_given=args.pccs is not None,
    )
    bundle: Bundle | None = load_bundle(read_input(args.bundle)) if args.bundle else None
    default_at = bundle.fetched_at if bundle is not None else int(time.time())
    policy = Policy(
        at=_time_arg(args.at, default_at),
        allowed_tcb=steps.DEFAULT_ALLOWED_TCB | frozenset(args.allow_tcb),
        expect_compose_hash=_hex_arg(args.expect_compose_hash, "--expect-compose-hash", 32),
        expect_app_id=_hex_arg(args.expect_app_id, "--expect-app-id"),
        allow_simulated=args.allow_simulated,
        root_ca_der=read_input(args.root_ca) if args.root_ca else None,
        skip_dcap=args.skip_dcap,
    )

    if args.evidences is not None or args.evidences_dir is not None:
        return _run_evidences(args, policy, source, out)
    if args.url is not None:
        nonce = _nonce_arg(args.nonce)
        verdict, fetched = asyncio.run(
            verify_url(args.url, policy, source, nonce=nonce, request_timeout=args.timeout)
        )
        if args.save_bundle is not None:
            save_bundle(Path(args.save_bundle), fetched)
        shown = f"nonce {nonce.hex()}" if nonce is not None else "no nonce"
        return _report(verdict, f"{args.url} ({shown})", args.json, out)
    if bundle is not None:
        checking = verify_bundle(bundle, policy, source, request_timeout=args.timeout)
        verdict, _ = asyncio.run(checking)
        return _report(verdict, f"bundle {args.bundle} from {bundle.url}", args.json, out)
    loaded = load_evidence(read_input(args.dstack_quote))
    event_log = loaded.event_log
    if args.event_log is not None:
        event_log = read_input(args.event_log).decode("utf-8", "replace")
    evidence = Evidence(quote=loaded.quote, event_log=event_log)
    verdict = asyncio.run(_verify_quote_file(evidence, policy, source, args.timeout))
    return _report(verdict, f"{loaded.kind} {args.dstack_quote}", args.json, out)


def _run_evidences(
    args: argparse.Namespace, policy: Policy, source: CollateralSource, out: TextIO
) -> int:
    if args.evidences is not None:
        connect_to = evidences.parse_connect_to(args.connect_to) if args.connect_to else None
        if args.tls_ca is not None and not Path(args.tls_ca).is_file():
            fail(f"{PROG}: cannot read {args.tls_ca}: no such file")
        fetching = evidences.fetch_evidences(
            args.evidences,
            connect_to=connect_to,
            ca_file=args.tls_ca,
            request_timeout=args.timeout,
        )
        found = asyncio.run(fetching)
    else:
        found = evidences.read_evidences_dir(Path(args.evidences_dir), args.domain)
    checking = evidences.verify_evidences(found, policy, source, request_timeout=args.timeout)
    verdict = asyncio.run(checking)
    subject = f"evidences {found.source} for {found.domain}"
    return _report(verdict, subject, args.json, out, evidences.notes(found))


def run(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command and return its exit code (usage, I/O and network errors: 2, one line)."""
    stream = out if out is not None else sys.stdout
    try:
        return _run(argv, stream)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else steps.EXIT_USAGE
    except (
        BundleError,
        CollateralError,
        FetchError,
        AttestationError,
        evidences.EvidencesError,
    ) as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
    except OSError as exc:
        sys.stderr.write(f"{PROG}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ") + "\n")
    return steps.EXIT_USAGE


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-verify`."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
