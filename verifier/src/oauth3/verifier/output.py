"""What `oauth3-verify` prints: text a terminal cannot be tricked by, and JSON that always parses.

Everything shown may come from the evidence (a URL in a bundle, a server's problem title, an event
name), so every string is made inert before it reaches a terminal: control characters, escape
sequences, bidirectional overrides and line separators become visible `\\xNN` / `\\uNNNN` escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .verdict import VERDICT_MEANINGS, Outcome, Verdict, hex_or_none

MARKS = {
    Outcome.PASS: "✓",
    Outcome.FAIL: "✗",
    Outcome.SKIPPED: "!",
    Outcome.UNPINNED: "!",
    Outcome.NOT_FRESH: "!",
    Outcome.NOT_APPLICABLE: "-",
}
MAX_INT = (1 << 63) - 1


def printable(text: str) -> str:
    """`text` with every character that is not printable (controls, escape sequences, format
    characters such as bidi overrides, separators other than the space, surrogates, private-use
    and unassigned code points) replaced by a visible escape."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def jsonable(value: Any) -> Any:
    """A copy orjson can always encode: strings without lone surrogates, integers within
    64 bits (else their decimal text), bytes as hex, any other object as its text."""
    if isinstance(value, Mapping):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int) and -MAX_INT - 1 <= value <= MAX_INT:
        return value
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_text(document: Mapping[str, Any]) -> str:
    """Indented JSON whose DEL, non-ASCII controls and format characters are \\u-escaped: the
    same values for a parser, inert for a terminal someone `cat`s it to."""
    text = orjson.dumps(jsonable(document), option=orjson.OPT_INDENT_2).decode()
    if text.isascii() and "\x7f" not in text:  # JSON leaves DEL raw; a terminal does not
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _verdict_lines(verdict: Verdict) -> list[str]:
    name, code = verdict.verdict, verdict.exit_code
    failure = verdict.first_failure
    if failure is not None:
        return [f"FAILED at {failure.name} (exit {code})"]
    lines = [f"  gap: {gap}" for gap in verdict.gaps]
    if verdict.simulated:
        lines.append("  simulated: not Intel hardware; accepted because of --allow-simulated")
    lines.append(f"{name} (exit {code}): {VERDICT_MEANINGS[name]}")
    return lines


def render(verdict: Verdict, subject: str, notes: list[str], program: str) -> str:
    """The human-readable report: one line per step, facts, the verdict last."""
    width = max(len(s.name) for s in verdict.steps)
    lines = [f"{program}: {subject}"]
    lines += [f"  ! {note}" for note in notes]
    lines += [f"  {MARKS[s.outcome]} {s.name:<{width}}  {s.reason}" for s in verdict.steps]
    facts: list[tuple[str, str | None]] = [
        ("report_data", hex_or_none(verdict.report_data)),
        ("compose_hash", hex_or_none(verdict.compose_hash)),
        ("app_id", hex_or_none(verdict.app_id)),
        ("instance_id", hex_or_none(verdict.instance_id)),
        ("tcb_status", verdict.tcb_status),
        ("checked_at", verdict.as_json()["checked_at"]),
    ]
    fetched = verdict.evidence.get("fetched_at")
    if fetched is not None:
        facts.append(("fetched_at", f"{fetched} ({verdict.evidence.get('fetched_at_source')})"))
    if verdict.collateral is not None:
        facts.append(("collateral", _collateral_line(verdict.collateral)))
    lines += [f"  {label:<13} {value}" for label, value in facts if value is not None]
    lines += _verdict_lines(verdict)
    return "\n".join(printable(line) for line in lines) + "\n"


def _collateral_line(collateral: Mapping[str, Any]) -> str:
    parts = [
        f"{key} {str(collateral[key])[:16]}…"
        for key in ("tcb_info_sha256", "qe_identity_sha256", "pck_crl_sha256", "root_ca_crl_sha256")
        if collateral.get(key)
    ]
    number = collateral.get("tcb_evaluation_data_number")
    if number is not None:
        parts.append(f"tcbEvaluationDataNumber {number}")
    return ", ".join(parts)
