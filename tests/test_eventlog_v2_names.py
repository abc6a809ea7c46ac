"""dstack 0.6 V2 runtime events whose names carry non-ASCII and control characters.

dstack (cc-eventlog/src/runtime_events.rs, `canonical_event_json_v2`) hashes the RFC 8785 text
that serde_jcs 0.2 writes for {"name", "type", "payload"}. serde_jcs serialises strings with
serde_json's escaper: `"` and `\\` escaped, U+0008/09/0A/0C/0D as \\b \\t \\n \\f \\r, every
other character below U+0020 as \\u00XX with lower-case hex, everything else (DEL, C1 controls,
bidi overrides, emoji) as raw UTF-8; keys sorted, no whitespace. The expected preimages below were
written out by hand from that reading, not produced by our encoder.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from oauth3.attestation import (
    RUNTIME_EVENT_TYPE,
    Event,
    EventLogError,
    measured_digest,
    runtime_event_preimage,
)

VECTORS = [
    (
        "app\x1b[31m\u00e9\u202e\n\t\x7f\x00",
        b"\x01",
        b'{"name":"app\\u001b[31m\xc3\xa9\xe2\x80\xae\\n\\t\x7f\\u0000","payload":"01",'
        b'"type":134217729}',
    ),
    ('say "hi" \\ bye', b"", b'{"name":"say \\"hi\\" \\\\ bye","payload":"","type":134217729}'),
    (
        "\x08\x0c\r\x1f\x0b",
        b"\xff",
        b'{"name":"\\b\\f\\r\\u001f\\u000b","payload":"ff","type":134217729}',
    ),
    (
        "\U0001f602\u0080\u2028",
        b"\xab\xcd",
        b'{"name":"\xf0\x9f\x98\x82\xc2\x80\xe2\x80\xa8","payload":"abcd","type":134217729}',
    ),
]


@pytest.mark.parametrize(("name", "payload", "preimage"), VECTORS)
def test_v2_preimages_encode_names_as_dstack_does(
    name: str, payload: bytes, preimage: bytes
) -> None:
    assert runtime_event_preimage(name, payload, 2) == preimage
    event = Event(3, RUNTIME_EVENT_TYPE, b"", name, payload, version=2, preimage=preimage)
    assert measured_digest(event) == hashlib.sha384(preimage).digest()


@pytest.mark.parametrize(("name", "payload", "preimage"), VECTORS)
def test_a_v2_preimage_escaped_otherwise_is_not_canonical(
    name: str, payload: bytes, preimage: bytes
) -> None:
    """The same JSON value written another way (ASCII-only escapes, upper-case hex) is refused:
    dstack checks the preimage is the canonical representation, and so do we."""
    other = json.dumps(
        {"name": name, "payload": payload.hex(), "type": RUNTIME_EVENT_TYPE},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    for plain, unusual in ((b'\\"', b"\\u0022"), (b"\\u001f", b"\\u001F")):
        if other == preimage:
            other = preimage.replace(plain, unusual)
    if other == preimage:
        pytest.fail("the vector has nothing to escape differently")
    event = Event(3, RUNTIME_EVENT_TYPE, b"", name, payload, version=2, preimage=other)
    with pytest.raises(EventLogError, match="canonical"):
        measured_digest(event)


def test_inspect_prints_event_names_with_controls_escaped(vectors: Path, tmp_path: Path) -> None:
    """The fixture boots V1, so the app event is V1 (its name hashed as raw UTF-8)."""
    name, payload, _ = VECTORS[0]
    document = json.loads((vectors / "dstack-head/verifier-fixtures/quote-report.json").read_text())
    events = json.loads(document["event_log"])
    v1_preimage = RUNTIME_EVENT_TYPE.to_bytes(4, "little") + b":" + name.encode() + b":" + payload
    events.append(
        {
            "imr": 3,
            "event_type": RUNTIME_EVENT_TYPE,
            "digest": hashlib.sha384(v1_preimage).hexdigest(),
            "event": name,
            "event_payload": payload.hex(),
        }
    )
    log = tmp_path / "events.json"
    log.write_text(json.dumps(events))
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "oauth3.verifier.inspect_cli",
            str(vectors / "dstack-head/verifier-fixtures/quote-report.json"),
            "--event-log",
            str(log),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert not any(b < 0x20 and b != 0x0A for b in process.stdout)
    assert "\u202e".encode() not in process.stdout
    out = json.loads(process.stdout)
    assert out["event_log"]["rtmr3_error"] is None, out["event_log"]
    assert out["event_log"]["app_events"][-1] == name
