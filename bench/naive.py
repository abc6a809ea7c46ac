"""Baseline: a naive service that asks the agent for a fresh quote on every request, no cache."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from oauth3.attestation.report_data import info_digest, report_data_for
from oauth3.attestation.response import QuotedEvidence, v1_body
from oauth3.runtime.serve import serve

AGENT = web.AppKey("agent", aiohttp.ClientSession)


def naive_app(agent_socket: Path, info: bytes) -> web.Application:
    """GET /attestation: one GetQuote straight to the agent socket per request."""
    report_data = report_data_for(info_digest(info))

    async def agent_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.UnixConnector(path=str(agent_socket), keepalive_timeout=5)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[AGENT] = session
            yield

    async def get_attestation(request: web.Request) -> web.Response:
        payload = {"report_data": report_data.hex()}
        async with request.app[AGENT].post("http://dstack/GetQuote", json=payload) as answer:
            doc = orjson.loads(await answer.read())
        evidence = QuotedEvidence(
            bytes.fromhex(doc["quote"]), doc["event_log"], doc.get("vm_config", "")
        )
        body = v1_body(evidence, report_data, None)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(agent_session)
    app.router.add_get("/attestation", get_attestation)
    return app


def main() -> None:
    """`python -m bench.naive PORT AGENT_SOCKET INFO_FILE`."""
    parser = argparse.ArgumentParser(prog="bench.naive")
    parser.add_argument("port", type=int)
    parser.add_argument("agent_socket", type=Path)
    parser.add_argument("info", type=Path)
    args = parser.parse_args()
    app = naive_app(args.agent_socket, args.info.read_bytes())
    asyncio.run(serve(app, host="127.0.0.1", port=args.port, shutdown_timeout=1))


if __name__ == "__main__":
    main()
