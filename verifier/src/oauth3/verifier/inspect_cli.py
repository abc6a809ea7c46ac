"""`oauth3-inspect FILE`: decode a TDX quote (and its event log) into one JSON object."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from oauth3.attestation import (
    AttestationError,
    EventLogError,
    ReceivedQuote,
    compare_with_quote,
    decode_mr_config_id,
    load_evidence,
    parse_event_log,
    parse_quote,
)
from oauth3.attestation.rtmr3 import read_boot_record

from .cli_common import USAGE_ERROR, ClientArgumentParser, read_input_or_exit
from .output import json_text, printable

PROG = "oauth3-inspect"


def _hex_or_none(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _rtmr3(events: list[Any]) -> dict[str, Any]:
    """The OS facts under dstack's RTMR3 rules, or why the log breaks them (facts then null)."""
    try:
        boot = read_boot_record(events)
    except EventLogError as exc:
        return {"rtmr3_error": str(exc), "app_id": None, "compose_hash": None}
    return {
        "rtmr3_error": None,
        "app_id": boot.app_id.hex(),
        "compose_hash": boot.compose_hash.hex(),
        "instance_id": _hex_or_none(boot.instance_id),
        "key_provider": boot.key_provider,
        "os_image_hash": _hex_or_none(boot.os_image_hash),
        "os_events": boot.names,
        "app_events": [e.event for e in boot.app_events],
    }


def describe(evidence: ReceivedQuote, event_log_text: str | None = None) -> dict[str, Any]:
    """Everything `oauth3-inspect` prints for one piece of evidence, as a JSON-ready dict."""
    quote = parse_quote(evidence.quote)
    report = quote.report
    quote_info: dict[str, Any] = {
        "version": quote.header.version,
        "tee_type": "TDX",
        "body_type": quote.body_type,
        "mr_td": report.mr_td.hex(),
        "mr_config_id": report.mr_config_id.hex(),
        "mr_owner": report.mr_owner.hex(),
        "mr_owner_config": report.mr_owner_config.hex(),
        "mr_seam": report.mr_seam.hex(),
        "td_attributes": report.td_attributes.hex(),
        "debug": report.debug,
        "tee_tcb_svn": report.tee_tcb_svn.hex(),
        "rtmr": [r.hex() for r in report.rtmr],
        "report_data": report.report_data.hex(),
        "compose_hash_from_mr_config_id": _hex_or_none(decode_mr_config_id(report.mr_config_id)),
        "signed_length": quote.signed_length,
        "size": len(quote.raw),
        "pck_chain_certificates": len(quote.signature_data.pck_chain_pem()),
    }
    text = event_log_text if event_log_text is not None else evidence.event_log
    log_info: dict[str, Any] | None = None
    if text is not None:
        events = parse_event_log(text)
        replay = compare_with_quote(events, report.rtmr)
        log_info = {
            "events": len(events),
            "replayed_rtmr": [r.hex() for r in replay.replayed],
            "rtmr_match": list(replay.matches),
            **_rtmr3(events),
        }
    declared = evidence.report_data
    return {
        "kind": evidence.kind,
        "quote": quote_info,
        "event_log": log_info,
        "declared_report_data": _hex_or_none(declared),
        "declared_report_data_matches": (
            None if declared is None else declared.ljust(64, b"\0") == report.report_data
        ),
    }


def _parser() -> ClientArgumentParser:
    parser = ClientArgumentParser(
        prog=PROG,
        description="Decode a TDX quote: raw, hex, a dstack GetQuote/Tappd response, "
        "or an oauth3 /attestation response.",
    )
    parser.add_argument("file", help="the evidence file, or - for stdin")
    parser.add_argument(
        "--event-log", metavar="FILE", help="an event log kept apart from the quote (JSON array)"
    )
    return parser


def run(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Print the description of one evidence file and return 0; any bad input (or failure of
    this program) is one escaped line on stderr and exit code 2."""
    try:
        args = _parser().parse_args(argv)
        data = read_input_or_exit(args.file)
        event_log_text = (
            read_input_or_exit(args.event_log).decode("utf-8", "replace")
            if args.event_log
            else None
        )
        result = describe(load_evidence(data), event_log_text)
    except SystemExit as exc:  # argparse and read_input_or_exit have printed their one line
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    except AttestationError as exc:
        return _error(str(exc))
    except Exception as exc:
        return _error(f"internal error (a bug: please report it): {type(exc).__name__}: {exc}")
    (out if out is not None else sys.stdout).write(json_text(result) + "\n")
    return 0


def _error(message: str) -> int:
    sys.stderr.write(f"{PROG}: {printable(' '.join(message.split()))}\n")
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-inspect`."""
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
