"""Event-log parsing, runtime digests and RTMR replay against the real logs in the vectors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from oauth3.attestation import (
    EventLogError,
    compare_with_quote,
    compose_hash,
    dump_event_log,
    parse_event_log,
    parse_quote,
    read_boot_record,
    runtime_event_digest,
    stripped,
)
from oauth3.attestation.eventlog import Event

# (quote source, event-log source) for every vector that carries both
PAIRS = {
    "quote-report": ("dstack-head/verifier-fixtures/quote-report.json", None),
    "v0.5.4-simulator": (
        "dstack-v0.5.4-simulator/quote.hex",
        "dstack-v0.5.4-simulator/eventlog.json",
    ),
    "rtmr3-based": ("dstack-examples/rtmr3-based/report.json", None),
}


def load_pair(vectors: Path, key: str) -> tuple[tuple[bytes, ...], str]:
    quote_name, log_name = PAIRS[key]
    path = vectors / quote_name
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        raw, log = bytes.fromhex(doc["quote"]), doc["event_log"]
    else:
        raw = bytes.fromhex(path.read_text().strip())
        log = (vectors / str(log_name)).read_text()
    return parse_quote(raw).report.rtmr, log


@pytest.mark.parametrize("key", sorted(PAIRS))
def test_full_log_replays_to_quote(vectors: Path, key: str) -> None:
    rtmrs, log = load_pair(vectors, key)
    replay = compare_with_quote(parse_event_log(log), rtmrs)
    assert replay.matches == (True, True, True, True)
    assert replay.mismatched == []


@pytest.mark.parametrize("key", sorted(PAIRS))
def test_stripped_log_still_replays(vectors: Path, key: str) -> None:
    rtmrs, log = load_pair(vectors, key)
    events = stripped(parse_event_log(log))
    assert all(e.digest == b"" for e in events if e.is_runtime)
    assert all(e.event_payload == b"" for e in events if not e.is_runtime)
    reparsed = parse_event_log(dump_event_log(events))
    assert compare_with_quote(reparsed, rtmrs).matches == (True, True, True, True)


@pytest.mark.parametrize("strip", [False, True], ids=["full", "stripped"])
def test_tampered_payload_fails_naming_rtmr3(vectors: Path, strip: bool) -> None:
    rtmrs, log = load_pair(vectors, "quote-report")
    events = parse_event_log(log)
    index = next(i for i, e in enumerate(events) if e.event == "compose-hash")
    events[index] = replace(events[index], event_payload=b"\x00" * 32)
    if strip:
        replay = compare_with_quote(stripped(events), rtmrs)
        assert replay.mismatched == [3]
        assert "RTMR3" in replay.describe_mismatch()
    else:
        # the full format still carries the old digest: the contradiction is caught first
        with pytest.raises(EventLogError, match=r"compose-hash.*RTMR3.*does not match"):
            compare_with_quote(events, rtmrs)


@pytest.mark.parametrize("strip", [False, True], ids=["full", "stripped"])
def test_swapped_events_fail(vectors: Path, strip: bool) -> None:
    rtmrs, log = load_pair(vectors, "quote-report")
    events = parse_event_log(log)
    i = next(i for i, e in enumerate(events) if e.event == "app-id")
    j = next(i for i, e in enumerate(events) if e.event == "compose-hash")
    events[i], events[j] = events[j], events[i]
    replay = compare_with_quote(stripped(events) if strip else events, rtmrs)
    assert replay.mismatched == [3]


def test_swapped_boot_events_name_rtmr0(vectors: Path) -> None:
    rtmrs, log = load_pair(vectors, "v0.5.4-simulator")
    events = parse_event_log(log)
    first, second = [i for i, e in enumerate(events) if e.imr == 0][:2]
    events[first], events[second] = events[second], events[first]
    replay = compare_with_quote(events, rtmrs)
    assert replay.mismatched == [0]
    assert replay.describe_mismatch().startswith("RTMR0 replays to")


@pytest.mark.parametrize("strip", [False, True], ids=["full", "stripped"])
def test_extra_event_fails(vectors: Path, strip: bool) -> None:
    rtmrs, log = load_pair(vectors, "rtmr3-based")
    events = parse_event_log(log)
    extra = Event(
        imr=3,
        event_type=0x08000001,
        digest=runtime_event_digest("injected", b"evil"),
        event="injected",
        event_payload=b"evil",
    )
    events.append(extra)
    replay = compare_with_quote(stripped(events) if strip else events, rtmrs)
    assert replay.mismatched == [3]


def test_runtime_digest_vector() -> None:
    # reference §5.3: system-preparing with an empty payload
    assert runtime_event_digest("system-preparing", b"").hex() == (
        "f9974020ef507068183313d0ca808e0d1ca9b2d1ad0c61f5784e7157c362c065"
        "36f5ddacdad4451693f48fcc72fff624"
    )


def test_every_recorded_runtime_digest_recomputes(vectors: Path) -> None:
    for key in PAIRS:
        _, log = load_pair(vectors, key)
        for event in parse_event_log(log):
            if event.is_runtime:
                assert event.digest == runtime_event_digest(event.event, event.event_payload)


def test_os_facts_come_from_before_system_ready(vectors: Path) -> None:
    _, log = load_pair(vectors, "quote-report")
    events = parse_event_log(log)
    boot = read_boot_record(events)
    assert boot.app_id.hex() == "3763bc34552cf3a27ff71ad5f7a90471562a1a2d"
    assert boot.compose_hash[:20] == boot.app_id
    assert boot.key_provider is not None
    assert '"local-sgx"' in boot.key_provider
    assert [e.event for e in boot.app_events] == ["LIUM_MINER_HOTKEY"]
    # an app-emitted compose-hash after system-ready must not shadow the boot-time facts
    late = [*events, replace(events[-1], event="compose-hash", event_payload=b"\x01" * 32)]
    later = read_boot_record(late)
    assert later.compose_hash == boot.compose_hash
    assert [e.event for e in later.app_events] == ["LIUM_MINER_HOTKEY", "compose-hash"]


def test_compose_hash_vector(vectors: Path) -> None:
    raw = (vectors / "dstack-examples/rtmr3-based/app-compose.json").read_bytes()
    _, log = load_pair(vectors, "rtmr3-based")
    boot = read_boot_record(parse_event_log(log))
    assert compose_hash(raw) == boot.compose_hash
    assert compose_hash(raw).hex().startswith("06768e6d")
    assert boot.app_id == compose_hash(raw)[:20]


def test_v2_fields_tolerated() -> None:
    log = json.dumps(
        [
            {
                "imr": 3,
                "event_type": 134217729,
                "digest": "",
                "event": "x",
                "event_payload": "00",
                "version": 2,
                "preimage": "7b7d",
            }
        ]
    )
    (event,) = parse_event_log(log)
    assert event.version == 2
    assert event.preimage == b"{}"


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("not json", "not valid JSON"),
        ("{}", "JSON array"),
        ("[1]", "event 0 is not a JSON object"),
        ('[{"imr": 4, "event_type": 1, "digest": ""}]', "out of range"),
        ('[{"imr": true, "event_type": 1}]', "'imr' must be"),
        ('[{"imr": 0, "event_type": 1, "digest": "zz"}]', "not valid hex"),
        ('[{"imr": 0, "event_type": 1, "digest": "00"}]', "1-byte digest"),
        ('[{"imr": 0, "event_type": 1, "event": 5}]', "'event' must be a string"),
    ],
)
def test_bad_logs_raise_typed_errors(log: str, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        compare_with_quote(parse_event_log(log), [bytes(48)] * 4)
