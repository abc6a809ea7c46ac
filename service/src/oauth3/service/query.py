"""The /attestation query, decoded strictly: a nonce, a layout, and nothing else, each at most once.

Names and values are percent-decoded as RFC 3986 and HTML forms do (`%6Eonce` is `nonce`, `+` is a
space), the way yarl and urllib read them, except that a percent-encoding which does not decode as
UTF-8 is refused rather than turned into U+FFFD: two different queries never read the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from oauth3.attestation import LAYOUT, LAYOUT_V2, LAYOUTS, ReportDataError, parse_nonce

# A raw query of these characters decodes to itself: split it here instead of through a parser
# that builds objects per request (about 5% of the service's CPU on the batched path).
# Anything else (%xx, '+', ';') takes urllib's path; both give the same pairs.
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9=&/._~-]*")
_SHOWN_NAME_CHARS = 32


class QueryError(ValueError):
    """The query is refused; the message is safe to show the client. `about_nonce` says whether
    the nonce was the problem (it is counted apart)."""

    def __init__(self, detail: str, *, about_nonce: bool = False) -> None:
        super().__init__(detail)
        self.about_nonce = about_nonce


@dataclass(frozen=True)
class AttestationQuery:
    """What an /attestation request asked for: its nonce (None without one) and layout."""

    nonce: bytes | None
    layout: str


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a raw query string, in order; QueryError when a
    percent-encoding does not decode as UTF-8."""
    if _PLAIN_QUERY.fullmatch(raw_query):
        return [(n, v) for n, _, v in (p.partition("=") for p in raw_query.split("&") if p)]
    try:
        return parse_qsl(raw_query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise QueryError("the query's percent-encoded bytes are not UTF-8") from None


def _shown(name: str) -> str:
    """A client-supplied name as quoted in an error: escaped by repr and cut to a few chars."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return repr(name)
    return f"{name[:_SHOWN_NAME_CHARS]!r}… ({len(name)} characters)"


def parse_attestation_query(raw_query: str) -> AttestationQuery:
    """The nonce and layout a raw /attestation query asks for; QueryError for anything else."""
    nonces: list[str] = []
    layouts: list[str] = []
    for name, value in query_pairs(raw_query):
        if name == "nonce":
            nonces.append(value)
        elif name == "layout":
            layouts.append(value)
        else:
            raise QueryError(
                f"unknown query parameter {_shown(name)}; only 'nonce' and 'layout' are accepted"
            )
    if len(nonces) > 1:
        raise QueryError("nonce was given more than once", about_nonce=True)
    nonce = None
    if nonces:
        try:
            nonce = parse_nonce(nonces[0])
        except ReportDataError as exc:
            raise QueryError(str(exc), about_nonce=True) from None
    if len(layouts) > 1:
        raise QueryError("layout was given more than once")
    layout = layouts[0] if layouts else LAYOUT
    if layout not in LAYOUTS:
        raise QueryError(f"layout must be one of {', '.join(LAYOUTS)}")
    if layout == LAYOUT_V2 and nonce is None:
        raise QueryError(f"layout {LAYOUT_V2} needs a nonce: it binds a tree of nonces")
    return AttestationQuery(nonce, layout)
