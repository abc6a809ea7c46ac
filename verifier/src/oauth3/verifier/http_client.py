"""HTTP for the verifier: whole bodies read to the end under a cap, redirects kept to one origin,
and every way a server or a man in the middle can fail a request turned into one HttpFailure."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from yarl import URL

if TYPE_CHECKING:
    import aiohttp
    from multidict import CIMultiDictProxy

CHUNK = 1 << 16
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class BodyTooLarge(Exception):
    """The body (or its declared Content-Length) exceeds the cap."""


class HttpFailure(Exception):
    """A request did not produce an answer to use: network error, unusable URL or redirect,
    body over the cap. The message starts with `GET <url>:` and names the cause."""


class AnswerTooLarge(HttpFailure):
    """The answer's body (or its declared Content-Length) exceeds the cap."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer: status, headers, body, and the URL that gave it (after redirects)."""

    url: URL
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


async def read_body(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The complete body however many pieces it arrives in; BodyTooLarge past `cap` bytes.
    (`content.read(n)` returns only what has arrived so far, which over a real network can be
    the first piece of a valid answer.)"""
    declared = response.content_length
    if declared is not None and declared > cap:
        raise BodyTooLarge(f"declares {declared} bytes, more than {cap}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"exceeds {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_host(raw_host: str) -> None:
    try:
        ipaddress.ip_address(raw_host)
        return
    except ValueError:
        pass
    labels = raw_host.removesuffix(".").split(".")
    if len(raw_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("its host is not a DNS name or an IP address")


def web_url(text: str | URL, what: str) -> URL:
    """An absolute http(s) URL whose host can be encoded for the wire (a DNS name of valid
    labels, IDNA applied, or an IP address) and whose port is 1-65535; HttpFailure naming
    `what` otherwise (hosts such as `a..b`, `ex ample`, or with an unpaired surrogate)."""
    try:
        url = text if isinstance(text, URL) else URL(text)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError("an http:// or https:// URL with a host is required")
        _check_host(url.raw_host)
        if url.host is None or not 0 < (url.port or 0) < 65536:
            raise ValueError("its port is not 1-65535")
        return url
    except (ValueError, UnicodeError, TypeError) as exc:
        shown = text if isinstance(text, str) else str(text)
        raise HttpFailure(f"{what} {shown!r} is not a usable URL: {exc}") from None


def _next_url(current: URL, response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if location is None:
        raise HttpFailure(f"GET {current}: HTTP {response.status} redirect without a Location")
    target = web_url(current.join(URL(location)) if location else current, "redirect to")
    if target.origin() != current.origin():
        raise HttpFailure(
            f"GET {current}: redirected to another origin ({target}); not followed, since the "
            "report would name the URL you gave"
        )
    return target


async def get_capped(
    session: aiohttp.ClientSession,
    url: str | URL,
    cap: int,
    *,
    on_response: Callable[[aiohttp.ClientResponse], None] | None = None,
) -> Answer:
    """GET `url`, following at most MAX_REDIRECTS redirects within its origin, and read the whole
    body up to `cap` bytes. `on_response` sees each final response before its body is read (its
    connection is still attached). Raises HttpFailure for anything but a complete answer."""
    import aiohttp  # noqa: PLC0415 - loaded by the paths that go online, not by offline ones

    current = web_url(url, "URL")
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with session.get(current, allow_redirects=False) as response:
                if response.status in REDIRECTS:
                    current = _next_url(current, response)
                    continue
                if on_response is not None:
                    on_response(response)
                body = await read_body(response, cap)
                return Answer(current, response.status, response.headers, body)
        except BodyTooLarge as exc:
            raise AnswerTooLarge(f"GET {current}: the body {exc}") from None
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, ValueError) as exc:
            raise HttpFailure(f"GET {current}: {type(exc).__name__} {exc}".rstrip()) from None
    raise HttpFailure(f"GET {url}: more than {MAX_REDIRECTS} redirects")


def client_session(timeout: float) -> aiohttp.ClientSession:
    """A client session whose every request is bounded by `timeout` seconds in total."""
    import aiohttp  # noqa: PLC0415 - loaded by the paths that go online, not by offline ones

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
