"""RTMR3 under dstack's rules: runtime events only, OS events in order, app events apart."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from oauth3.attestation import (
    RUNTIME_EVENT_TYPE,
    Event,
    EventLogError,
    compare_with_quote,
    parse_event_log,
    parse_quote,
    read_boot_record,
    replay_rtmrs,
    runtime_event_digest,
    runtime_event_preimage,
)
from oauth3.attestation.eventlog import measured_digest

REPORT = "dstack-head/verifier-fixtures/quote-report.json"
COMPOSE = bytes(range(32))
EV_EFI_ACTION = 0x80000007


def runtime(name: str, payload: bytes = b"", version: int | None = None) -> Event:
    preimage = runtime_event_preimage(name, payload, version) if version == 2 else None
    return Event(3, RUNTIME_EVENT_TYPE, b"", name, payload, version, preimage)


def os_events(version: int | None = None, **payloads: bytes) -> list[Event]:
    """The 0.5.5+ KMS-less sequence; keyword arguments replace payloads (underscored names)."""
    defaults = {
        "system-preparing": b"",
        "app-id": COMPOSE[:20],
        "compose-hash": COMPOSE,
        "instance-id": bytes(20),
        "boot-mr-done": b"",
        "key-provider": b'{"name":"none","id":""}',
        "storage-fs": b"ext4",
        "system-ready": b"",
    }
    defaults.update({k.replace("_", "-"): v for k, v in payloads.items()})
    return [runtime(name, payload, version) for name, payload in defaults.items()]


def test_an_honest_boot_reads_in_order_with_app_events_apart() -> None:
    events = [*os_events(), runtime("app-ready", b"\x01"), runtime("compose-hash", bytes(32))]
    boot = read_boot_record(events)
    assert boot.compose_hash == COMPOSE
    assert boot.app_id == COMPOSE[:20]
    assert boot.names[-1] == "system-ready"
    assert [e.event for e in boot.app_events] == ["app-ready", "compose-hash"]


def test_a_retyped_rtmr3_event_is_refused_even_though_it_replays() -> None:
    honest = os_events()
    digest = runtime_event_digest("compose-hash", COMPOSE)
    retyped = [
        replace(e, event_type=EV_EFI_ACTION, digest=digest) if e.event == "compose-hash" else e
        for e in honest
    ]
    assert replay_rtmrs(retyped) == replay_rtmrs(honest)
    with pytest.raises(EventLogError, match="event 2 in RTMR3 has type 0x80000007"):
        read_boot_record(retyped)


def test_a_runtime_event_outside_rtmr3_is_refused() -> None:
    events = [replace(runtime("x"), imr=2), *os_events()]
    with pytest.raises(EventLogError, match="runtime event outside RTMR3"):
        read_boot_record(events)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (os_events()[:-1], "no 'system-ready'"),
        ([*os_events()[:2], runtime("hello"), *os_events()[2:]], "not an event the dstack OS"),
        ([os_events()[2], os_events()[1], *os_events()[3:]], "out of dstack's order"),
        ([*os_events()[:3], os_events()[2], *os_events()[3:]], "repeated"),
        ([e for e in os_events() if e.event != "key-provider"], "lacks the OS event"),
        (os_events(compose_hash=bytes(31)), "31-byte payload"),
        (os_events(app_id=bytes(32)), "32-byte payload"),
        (os_events(key_provider=b"kms"), "key-provider JSON"),
        ([*os_events()[:-1], runtime("system-ready", b"x")], "1-byte payload"),
    ],
)
def test_os_events_break_a_rule(events: list[Event], message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        read_boot_record(events)


def test_kms_retries_may_repeat_mr_kms_and_os_image_hash() -> None:
    image = bytes([7]) * 32
    kms = [runtime("mr-kms", bytes(32)), runtime("os-image-hash", image)] * 2
    events = os_events()
    events[5:5] = kms
    boot = read_boot_record(events)
    assert boot.os_image_hash == image
    events[6] = runtime("os-image-hash", bytes([8]) * 32)
    with pytest.raises(EventLogError, match="different os-image-hash"):
        read_boot_record(events)


def test_v2_digest_is_sha384_of_upstreams_canonical_text() -> None:
    # the canonical text is upstream's own test vector (cc-eventlog runtime_events.rs)
    preimage = runtime_event_preimage("compose-hash", b"\xab\xcd", 2)
    assert preimage == b'{"name":"compose-hash","payload":"abcd","type":134217729}'
    assert runtime_event_digest("compose-hash", b"\xab\xcd", 2) == hashlib.sha384(preimage).digest()
    v1 = runtime_event_preimage("system-preparing", b"")
    assert v1.hex() == "010000083a73797374656d2d707265706172696e673a"
    assert runtime_event_digest("system-preparing", b"").hex().startswith("f9974020ef507068")


def test_v2_events_need_their_canonical_preimage() -> None:
    event = runtime("compose-hash", COMPOSE, 2)
    assert measured_digest(event) == runtime_event_digest("compose-hash", COMPOSE, 2)
    with pytest.raises(EventLogError, match="without its preimage"):
        measured_digest(replace(event, preimage=None))
    with pytest.raises(EventLogError, match="not the event's canonical form"):
        measured_digest(replace(event, preimage=event.preimage + b" "))  # type: ignore[operator]
    with pytest.raises(EventLogError, match="version 3 is unknown"):
        measured_digest(replace(event, version=3))
    assert read_boot_record(os_events(2)).compose_hash == COMPOSE


def test_v1_and_v2_events_do_not_mix_in_one_boot() -> None:
    events = [*os_events(), runtime("late", b"", 2)]
    with pytest.raises(EventLogError, match="mixes V1 and V2"):
        read_boot_record(events)


def test_every_real_vector_reads_under_the_rules(vectors: Path) -> None:
    doc = json.loads((vectors / REPORT).read_text())
    events = parse_event_log(doc["event_log"])
    quote = parse_quote(bytes.fromhex(doc["quote"]))
    assert all(compare_with_quote(events, quote.report.rtmr).matches)
    boot = read_boot_record(events)
    assert boot.names == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
        "key-provider",
        "system-ready",
    ]
    retyped = [
        replace(e, event_type=EV_EFI_ACTION, digest=runtime_event_digest(e.event, e.event_payload))
        if e.event in ("compose-hash", "system-ready")
        else e
        for e in events
    ]
    assert all(compare_with_quote(retyped, quote.report.rtmr).matches)
    with pytest.raises(EventLogError, match="only dstack runtime events"):
        read_boot_record(retyped)
