"""dstack event logs: parse (full and stripped formats), recompute runtime digests, replay RTMRs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .errors import EventLogError
from .strict_json import StrictJSONError, parse_strict_json

RUNTIME_EVENT_TYPE = 0x08000001
RTMR_SIZE = 48
RTMR_COUNT = 4
BOOT_DONE_EVENT = "system-ready"


@dataclass(frozen=True, slots=True)
class Event:
    """One event-log entry; `digest` is empty for runtime events of the stripped format."""

    imr: int
    event_type: int
    digest: bytes
    event: str
    event_payload: bytes
    version: int | None = None
    preimage: bytes | None = field(default=None, repr=False)

    @property
    def is_runtime(self) -> bool:
        """True for dstack runtime events (RTMR3 measurements such as compose-hash)."""
        return self.event_type == RUNTIME_EVENT_TYPE


@dataclass(frozen=True, slots=True)
class Replay:
    """RTMR0-3 replayed from an event log next to the values a quote reports."""

    replayed: tuple[bytes, ...]
    expected: tuple[bytes, ...]

    @property
    def matches(self) -> tuple[bool, ...]:
        """Per RTMR, whether the replay reproduces the quote's value."""
        return tuple(r == e for r, e in zip(self.replayed, self.expected, strict=True))

    @property
    def mismatched(self) -> list[int]:
        """Indices of the RTMRs whose replay differs from the quote."""
        return [i for i, ok in enumerate(self.matches) if not ok]

    def describe_mismatch(self) -> str:
        """One line naming each RTMR that differs, with both values abbreviated."""
        return "; ".join(
            f"RTMR{i} replays to {self.replayed[i].hex()[:16]}… but the quote has "
            f"{self.expected[i].hex()[:16]}…"
            for i in self.mismatched
        )


def runtime_event_preimage(name: str, payload: bytes, version: int | None = None) -> bytes:
    """The exact bytes a runtime event's digest hashes. V1 (no version, or 1):
    le32(0x08000001) ‖ ':' ‖ name ‖ ':' ‖ payload. V2: the RFC 8785 (JCS) JSON text of
    {"name", "payload" (hex), "type"}; for these string and integer values JCS is sorted keys,
    no whitespace, UTF-8 with only quote, backslash and control characters escaped."""
    if version in (None, 1):
        return RUNTIME_EVENT_TYPE.to_bytes(4, "little") + b":" + name.encode() + b":" + payload
    if version == 2:
        doc = {"name": name, "payload": payload.hex(), "type": RUNTIME_EVENT_TYPE}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raise EventLogError(f"runtime event version {version} is unknown (dstack knows 1 and 2)")


def runtime_event_digest(name: str, payload: bytes, version: int | None = None) -> bytes:
    """SHA-384 of `runtime_event_preimage`: what a runtime event extends RTMR3 with."""
    return hashlib.sha384(runtime_event_preimage(name, payload, version)).digest()


def measured_digest(event: Event, index: int = 0) -> bytes:
    """The 48 bytes this event extended its RTMR with. Runtime digests are always recomputed
    from name and payload; a recorded digest or preimage must agree (V2 events must carry
    their preimage, as dstack sends it)."""
    if event.is_runtime:
        preimage = runtime_event_preimage(event.event, event.event_payload, event.version)
        where = f"event {index} ({event.event!r}, RTMR{event.imr})"
        if event.version == 2 and event.preimage is None:
            raise EventLogError(f"{where} is a V2 runtime event without its preimage")
        if event.preimage is not None and event.preimage != preimage:
            raise EventLogError(f"{where}: recorded preimage is not the event's canonical form")
        computed = hashlib.sha384(preimage).digest()
        if event.digest and event.digest != computed:
            raise EventLogError(
                f"{where}: recorded digest {event.digest.hex()[:16]}… does not match its "
                f"content ({computed.hex()[:16]}…)"
            )
        return computed
    if len(event.digest) != RTMR_SIZE:
        raise EventLogError(
            f"event {index} (type 0x{event.event_type:08x}, RTMR{event.imr}) has a "
            f"{len(event.digest)}-byte digest, expected {RTMR_SIZE}"
        )
    return event.digest


def _hex_field(item: dict[str, Any], key: str, index: int, *, required: bool) -> bytes:
    value = item.get(key)
    if value is None and not required:
        return b""
    if not isinstance(value, str):
        raise EventLogError(f"event {index}: {key!r} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise EventLogError(f"event {index}: {key!r} is not valid hex") from None


def _int_field(item: dict[str, Any], key: str, index: int) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EventLogError(f"event {index}: {key!r} must be a non-negative integer")
    return value


def parse_event_list(items: object) -> list[Event]:
    """Parse an already-decoded JSON array of events (e.g. Info's tcb_info.event_log)."""
    if not isinstance(items, list):
        raise EventLogError("event log must be a JSON array of events")
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise EventLogError(f"event {index} is not a JSON object")
        imr = _int_field(item, "imr", index)
        if imr >= RTMR_COUNT:
            raise EventLogError(f"event {index}: imr {imr} is out of range 0-3")
        name = item.get("event", "")
        if not isinstance(name, str):
            raise EventLogError(f"event {index}: 'event' must be a string")
        version = item.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise EventLogError(f"event {index}: 'version' must be an integer")
        preimage = (
            _hex_field(item, "preimage", index, required=False) if "preimage" in item else None
        )
        events.append(
            Event(
                imr=imr,
                event_type=_int_field(item, "event_type", index),
                digest=_hex_field(item, "digest", index, required=False),
                event=name,
                event_payload=_hex_field(item, "event_payload", index, required=False),
                version=version,
                preimage=preimage,
            )
        )
    return events


def parse_event_log(text: str | bytes) -> list[Event]:
    """Parse the guest agent's `event_log` string (a JSON array inside a string)."""
    try:
        items = parse_strict_json(text)
    except StrictJSONError as exc:
        raise EventLogError(f"event log is not valid JSON: {exc}") from None
    return parse_event_list(items)


def _event_object(event: Event) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "imr": event.imr,
        "event_type": event.event_type,
        "digest": event.digest.hex(),
        "event": event.event,
        "event_payload": event.event_payload.hex(),
    }
    if event.version is not None:
        obj["version"] = event.version
    if event.preimage is not None:
        obj["preimage"] = event.preimage.hex()
    return obj


def dump_event_log(events: Iterable[Event]) -> str:
    """Serialise events the way the guest agent does: compact JSON, upstream key order."""
    return orjson.dumps([_event_object(e) for e in events]).decode()


def event_objects(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Events as plain JSON objects (for embedding in a larger document such as tcb_info)."""
    return [_event_object(e) for e in events]


def stripped(events: Iterable[Event]) -> list[Event]:
    """The OS >= 0.5.6 form: boot events lose their payload, runtime events lose their digest."""
    return [
        replace(e, digest=b"") if e.is_runtime else replace(e, event_payload=b"") for e in events
    ]


def replay_rtmrs(events: Sequence[Event]) -> tuple[bytes, ...]:
    """Replay RTMR0-3 from 48 zero bytes: mr = SHA-384(mr ‖ digest) per event, in log order."""
    registers = [bytes(RTMR_SIZE)] * RTMR_COUNT
    for index, event in enumerate(events):
        registers[event.imr] = hashlib.sha384(
            registers[event.imr] + measured_digest(event, index)
        ).digest()
    return tuple(registers)


def compare_with_quote(events: Sequence[Event], quote_rtmrs: Sequence[bytes]) -> Replay:
    """Replay the log and pair each RTMR with the quote's value; see `Replay.mismatched`."""
    if len(quote_rtmrs) != RTMR_COUNT:
        raise EventLogError(f"expected {RTMR_COUNT} RTMR values, got {len(quote_rtmrs)}")
    return Replay(replayed=replay_rtmrs(events), expected=tuple(quote_rtmrs))
