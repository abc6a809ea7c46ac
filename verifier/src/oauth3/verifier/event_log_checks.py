"""dstack's event log: RTMR0-3 replayed, RTMR3 read under dstack's rules, and the app it names
(compose hash, app id, key provider) against the relying party's pins. These change when dstack's
event log does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oauth3.attestation import (
    Event,
    Quote,
    compare_with_quote,
    decode_mr_config_id,
    parse_event_log,
)
from oauth3.attestation.rtmr3 import BootRecord, read_boot_record

from .policy import measured_key_provider
from .step_basics import CheckState, Evidence, VerifyOptions, fail, needs_quote, one_line
from .verdict import Outcome, Step, StepResult, hex_or_none


@dataclass(frozen=True, slots=True)
class LogReading:
    """The event log replayed against the quote and read under dstack's RTMR3 rules, once."""

    events: tuple[Event, ...] = ()
    replayed: tuple[bytes, ...] = ()
    mismatched: tuple[str, ...] = ()
    boot: BootRecord | None = None
    error: str | None = None


def read_log(evidence: Evidence, quote: Quote) -> LogReading:
    """Replay RTMR0-3 and read RTMR3; the error (if any) says why neither can be trusted."""
    if evidence.event_log is None:
        return LogReading(error="no event log: RTMR0-3 and the app identity cannot be checked")
    try:
        events = tuple(parse_event_log(evidence.event_log))
        replay = compare_with_quote(events, quote.report.rtmr)
    except Exception as exc:
        return LogReading(error=one_line(str(exc)))
    if replay.mismatched:
        return LogReading(
            events,
            replay.replayed,
            tuple(f"RTMR{i}" for i in replay.mismatched),
            error=f"event log does not replay: {replay.describe_mismatch()}",
        )
    try:
        boot = read_boot_record(events)
    except Exception as exc:
        return LogReading(events, replay.replayed, error=one_line(str(exc)))
    return LogReading(events, replay.replayed, boot=boot)


def log_reading(evidence: Evidence, state: CheckState) -> LogReading:
    if state.log is None:
        state.log = read_log(evidence, needs_quote(state))
    return state.log


def _event_summary(events: tuple[Event, ...]) -> list[dict[str, Any]]:
    return [{"event": e.event, "payload": e.event_payload.hex()} for e in events]


def check_event_log(evidence: Evidence, state: CheckState) -> StepResult:
    log = log_reading(evidence, state)
    details: dict[str, Any] = {
        "events": len(log.events),
        "replayed_rtmr": [r.hex() for r in log.replayed],
        "mismatched": list(log.mismatched),
    }
    if log.boot is None:
        raise fail(log.error or "the event log was not read", details)
    boot = log.boot
    details["os_events"] = boot.names
    details["app_events"] = _event_summary(boot.app_events)
    later = ""
    if boot.app_events:
        names = ", ".join(repr(e.event) for e in boot.app_events[:5])
        more = f" (+{len(boot.app_events) - 5} more)" if len(boot.app_events) > 5 else ""
        count = len(boot.app_events)
        later = f"; {count} app event(s) after boot, never read as OS facts: {names}{more}"
    return StepResult(
        Step.EVENT_LOG,
        Outcome.PASS,
        f"RTMR0-3 replay from {len(log.events)} events; RTMR3 holds dstack's OS events in order "
        f"({len(boot.os_events)}, ending with system-ready){later}",
        details,
    )


def check_compose(evidence: Evidence, state: CheckState, options: VerifyOptions) -> StepResult:
    quote = needs_quote(state)
    log = log_reading(evidence, state)
    if log.boot is None:
        raise fail("no event log read under dstack's rules to take the compose hash from")
    boot = log.boot
    policy = options.policy
    details: dict[str, Any] = {
        "compose_hash": boot.compose_hash.hex(),
        "app_id": boot.app_id.hex(),
        "instance_id": hex_or_none(boot.instance_id),
        "key_provider": boot.key_provider,
        "allowed_compose_hashes": sorted(h.hex() for h in policy.compose_hashes),
    }
    bound = decode_mr_config_id(quote.report.mr_config_id)
    details["mr_config_id_compose_hash"] = hex_or_none(bound)
    if bound is not None and bound != boot.compose_hash:
        raise fail(
            f"mr_config_id binds compose hash {bound.hex()[:16]}… but the OS measured "
            f"{boot.compose_hash.hex()[:16]}…",
            details,
        )
    if policy.compose_hashes and boot.compose_hash not in policy.compose_hashes:
        raise fail(
            f"compose hash {boot.compose_hash.hex()} is not one you pinned ({policy.source})",
            details,
        )
    if policy.app_ids and boot.app_id not in policy.app_ids:
        raise fail(f"app id {boot.app_id.hex()} is not one you pinned ({policy.source})", details)
    provider = measured_key_provider(boot.key_provider_payload)
    if policy.key_providers and provider not in policy.key_providers:
        shown = str(provider) if provider is not None else "one that is not dstack's serialisation"
        raise fail(
            f"key provider {shown} is not one you pinned ({policy.source}): the app's keys "
            "come from elsewhere",
            details,
        )
    said = f"compose hash {boot.compose_hash.hex()[:16]}…, app id {boot.app_id.hex()}"
    if bound is not None:
        said += ", agrees with mr_config_id"
    if not policy.compose_hashes:
        return StepResult(
            Step.COMPOSE,
            Outcome.UNPINNED,
            f"{said}; nothing pins the compose hash (give --expect-compose-hash or --policy)",
            details,
        )
    app = ", app id pinned" if policy.app_ids else ""
    app += ", key provider pinned" if policy.key_providers else ""
    return StepResult(Step.COMPOSE, Outcome.PASS, f"{said}; pinned ({policy.source}){app}", details)
