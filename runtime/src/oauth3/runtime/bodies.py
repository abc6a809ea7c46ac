"""Reading another process's answer without trusting its length."""

from __future__ import annotations

import aiohttp


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first `limit` bytes when it is longer: ask for one byte more than
    you accept to tell the two apart. ClientPayloadError when the peer hangs up early."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
