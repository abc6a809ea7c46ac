"""The strict JSON loader every client tool reads documents with: one meaning or a refusal."""

from __future__ import annotations

import pytest

from oauth3.attestation import (
    EvidenceError,
    StrictJSONError,
    exact,
    load_evidence,
    parse_event_log,
    parse_strict_json,
)
from oauth3.attestation.errors import EventLogError
from oauth3.attestation.strict_json import MAX_DEPTH, nesting_depth


def test_well_formed_documents_parse_as_json_says() -> None:
    assert parse_strict_json(b'{"a":[1,2.5,true,null,"]}\\"{["]}') == {
        "a": [1, 2.5, True, None, ']}"{[']
    }
    assert parse_strict_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


@pytest.mark.parametrize(
    "text",
    [
        b'{"kms_enabled": true, "kms_enabled": false}',
        b'[{"a": {"b": 1, "b": 1}}]',
        b"[NaN]",
        b"[Infinity]",
        b'["\\ud800"]',
        b'"\xff"',
        b'{"a": 1} {"b": 2}',
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b"[" * 100_000 + b"]" * 100_000,
        b"",
    ],
)
def test_ambiguous_or_pathological_documents_are_refused(text: bytes) -> None:
    with pytest.raises(StrictJSONError):
        parse_strict_json(text)


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"x": "[[[[{{{{", "y": [["\\"]]"]]}') == 3


def test_exact_types_do_not_confuse_numbers_and_booleans() -> None:
    assert exact(True, bool, "kms_enabled") is True
    assert exact(1, int, "n") == 1
    for value, kind in ((1, bool), (True, int), (1.0, int), (1, float), ("1", int)):
        with pytest.raises(StrictJSONError, match="must be"):
            exact(value, kind, "field")


def test_evidence_and_event_logs_refuse_duplicate_keys_and_deep_nesting() -> None:
    with pytest.raises(EvidenceError, match="twice"):
        load_evidence(b'{"quote": "00", "quote": "04"}')
    with pytest.raises(EventLogError, match="JSON"):
        parse_event_log("[" * 5000 + "]" * 5000)
    with pytest.raises(EventLogError, match="levels deep"):
        parse_event_log("[" * 100 + "]" * 100)
