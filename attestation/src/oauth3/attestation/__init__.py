"""Attestation formats shared by every oauth3 part: TDX quotes, dstack event logs, report_data.

Pure functions over bytes and strings; no I/O and no dependency on the rest of oauth3.

Names load from their module on first use, so a client importing one module of the package (the
TCB status names, say) does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compose import app_id_without_kms, compose_hash, decode_mr_config_id, mr_config_id_v1
    from .errors import (
        AttestationError,
        EventLogError,
        EvidenceError,
        QuoteFormatError,
        ReportDataError,
        ResponseError,
    )
    from .eventlog import (
        RUNTIME_EVENT_TYPE,
        Event,
        Replay,
        compare_with_quote,
        dump_event_log,
        event_objects,
        measured_digest,
        parse_event_list,
        parse_event_log,
        replay_rtmrs,
        runtime_event_digest,
        runtime_event_preimage,
        stripped,
    )
    from .evidence import ReceivedQuote, evidence_from_document, load_evidence
    from .quote import Quote, QuoteHeader, SignatureData, TdReport, parse_quote
    from .report_data import (
        LAYOUT,
        LAYOUT_V2,
        LAYOUTS,
        BoundReportData,
        batch_report_data_for,
        info_digest,
        parse_nonce,
        read_report_data,
        report_data_for,
    )
    from .response import AttestationResponse, parse_response, read_response
    from .rtmr3 import BootRecord, read_boot_record
    from .strict_json import (
        MAX_DEPTH,
        StrictJSONError,
        exact,
        is_exactly,
        json_type_name,
        parse_strict_json,
    )

_HOMES = {
    "compose": (
        "app_id_without_kms",
        "compose_hash",
        "decode_mr_config_id",
        "mr_config_id_v1",
    ),
    "errors": (
        "AttestationError",
        "EventLogError",
        "EvidenceError",
        "QuoteFormatError",
        "ReportDataError",
        "ResponseError",
    ),
    "eventlog": (
        "RUNTIME_EVENT_TYPE",
        "Event",
        "Replay",
        "compare_with_quote",
        "dump_event_log",
        "event_objects",
        "measured_digest",
        "parse_event_list",
        "parse_event_log",
        "replay_rtmrs",
        "runtime_event_digest",
        "runtime_event_preimage",
        "stripped",
    ),
    "evidence": (
        "ReceivedQuote",
        "evidence_from_document",
        "load_evidence",
    ),
    "quote": (
        "Quote",
        "QuoteHeader",
        "SignatureData",
        "TdReport",
        "parse_quote",
    ),
    "report_data": (
        "LAYOUT",
        "LAYOUT_V2",
        "LAYOUTS",
        "BoundReportData",
        "batch_report_data_for",
        "info_digest",
        "parse_nonce",
        "read_report_data",
        "report_data_for",
    ),
    "response": (
        "AttestationResponse",
        "parse_response",
        "read_response",
    ),
    "rtmr3": (
        "BootRecord",
        "read_boot_record",
    ),
    "strict_json": (
        "MAX_DEPTH",
        "StrictJSONError",
        "exact",
        "is_exactly",
        "json_type_name",
        "parse_strict_json",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "LAYOUT",
    "LAYOUTS",
    "LAYOUT_V2",
    "MAX_DEPTH",
    "RUNTIME_EVENT_TYPE",
    "AttestationError",
    "AttestationResponse",
    "BootRecord",
    "BoundReportData",
    "Event",
    "EventLogError",
    "EvidenceError",
    "Quote",
    "QuoteFormatError",
    "QuoteHeader",
    "ReceivedQuote",
    "Replay",
    "ReportDataError",
    "ResponseError",
    "SignatureData",
    "StrictJSONError",
    "TdReport",
    "app_id_without_kms",
    "batch_report_data_for",
    "compare_with_quote",
    "compose_hash",
    "decode_mr_config_id",
    "dump_event_log",
    "event_objects",
    "evidence_from_document",
    "exact",
    "info_digest",
    "is_exactly",
    "json_type_name",
    "load_evidence",
    "measured_digest",
    "mr_config_id_v1",
    "parse_event_list",
    "parse_event_log",
    "parse_nonce",
    "parse_quote",
    "parse_response",
    "parse_strict_json",
    "read_boot_record",
    "read_report_data",
    "read_response",
    "replay_rtmrs",
    "report_data_for",
    "runtime_event_digest",
    "runtime_event_preimage",
    "stripped",
]


def __getattr__(name: str) -> object:
    """Load a public name from its module on first use."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups find it without this function
    return value
