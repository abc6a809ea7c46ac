"""HTTP for the verifier: whole bodies read to the end, never more than a cap."""

from __future__ import annotations

import aiohttp

DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 16


class BodyTooLarge(Exception):
    """The body (or its declared Content-Length) exceeds the cap."""


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


def client_session(timeout: float) -> aiohttp.ClientSession:
    """A client session whose every request is bounded by `timeout` seconds in total."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
