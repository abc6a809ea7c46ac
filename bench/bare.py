"""Baseline: a bare aiohttp app answering fixed bytes, the ceiling for any aiohttp service."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from pathlib import Path

from aiohttp import web

from oauth3.runtime.serve import serve


def bare_app(info: bytes, attestation: bytes) -> web.Application:
    """GET /info and /attestation: these bytes with the service's headers, no middleware."""
    info_headers = {
        "ETag": f'"{hashlib.sha256(info).hexdigest()}"',
        "Cache-Control": "no-cache",
    }

    async def get_info(request: web.Request) -> web.Response:
        return web.Response(body=info, content_type="application/json", headers=info_headers)

    async def get_attestation(request: web.Request) -> web.Response:
        return web.Response(
            body=attestation, content_type="application/json", headers={"Cache-Control": "no-cache"}
        )

    app = web.Application()
    app.router.add_get("/info", get_info)
    app.router.add_get("/attestation", get_attestation)
    return app


def main() -> None:
    """`python -m bench.bare PORT INFO_FILE ATTESTATION_FILE`."""
    parser = argparse.ArgumentParser(prog="bench.bare")
    parser.add_argument("port", type=int)
    parser.add_argument("info", type=Path)
    parser.add_argument("attestation", type=Path)
    args = parser.parse_args()
    app = bare_app(args.info.read_bytes(), args.attestation.read_bytes())
    asyncio.run(serve(app, host="127.0.0.1", port=args.port, shutdown_timeout=1))


if __name__ == "__main__":
    main()
