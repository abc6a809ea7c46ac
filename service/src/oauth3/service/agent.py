"""Client for the sidecar's unix socket: GetQuote and Info, with failures mapped to typed errors."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from oauth3.attestation.response import QuotedEvidence
from oauth3.runtime.httpmw import REQUEST_ID_HEADER
from oauth3.runtime.sidecar_protocol import AGENT_MS_HEADER, QUEUE_MS_HEADER


class AgentError(Exception):
    """The quote path failed; `status` is what the client sees, `reason` a safe short label."""

    status = 502

    def __init__(
        self, reason: str, *, retry_after: int | None = None, log_detail: str = ""
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.log_detail = log_detail


class AgentUnavailableError(AgentError):
    """The sidecar or the agent cannot be reached, or the quote queue is full (503)."""

    status = 503


class AgentTimeoutError(AgentError):
    """The agent did not answer in time (504)."""

    status = 504


class AgentBadAnswerError(AgentError):
    """The agent answered something unusable (502)."""

    status = 502


@dataclass(frozen=True, slots=True)
class AgentQuote:
    """A GetQuote answer, decoded but not yet checked against the requested report_data."""

    quote: bytes
    event_log: str
    report_data: bytes
    vm_config: str
    queue_ms: float | None = None
    agent_ms: float | None = None

    @property
    def evidence(self) -> QuotedEvidence:
        """The members every /attestation layout carries."""
        return QuotedEvidence(self.quote, self.event_log, self.vm_config)


def _float_header(headers: Any, name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def decode_quote_answer(body: bytes) -> AgentQuote:
    """Decode the agent's GetQuote JSON; AgentBadAnswerError says which field is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AgentBadAnswerError("agent answer is not JSON") from None
    if not isinstance(doc, dict):
        raise AgentBadAnswerError("agent answer is not a JSON object")
    fields: dict[str, str] = {}
    for key in ("quote", "event_log", "report_data", "vm_config"):
        value = doc.get(key, "")
        if not isinstance(value, str):
            raise AgentBadAnswerError(f"agent answer field {key} is not a string")
        fields[key] = value
    try:
        quote = bytes.fromhex(fields["quote"])
        report_data = bytes.fromhex(fields["report_data"])
    except ValueError:
        raise AgentBadAnswerError("agent answer carries invalid hex") from None
    if not quote:
        raise AgentBadAnswerError("agent answer has no quote")
    return AgentQuote(
        quote=quote,
        event_log=fields["event_log"],
        report_data=report_data,
        vm_config=fields["vm_config"],
    )


class SidecarClient:
    """Talks to the sidecar over its unix socket; owns one ClientSession."""

    def __init__(self, socket_path: Path, *, timeout: float, retry_after: int) -> None:
        self._socket_path = socket_path
        self._timeout = timeout
        self._retry_after = retry_after
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session (connections are made lazily, so the sidecar may come up later)."""
        connector = aiohttp.UnixConnector(path=str(self._socket_path), keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None:
            await self._session.close()

    async def _post(self, method: str, payload: bytes, request_id: str, limit_s: float) -> Any:
        assert self._session is not None, "SidecarClient.start() was not awaited"
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
        try:
            async with asyncio.timeout(limit_s):
                async with self._session.post(
                    f"http://sidecar/{method}", data=payload, headers=headers
                ) as response:
                    body = await response.read()
                    return response.status, response.headers, body
        except TimeoutError:
            raise AgentTimeoutError("agent timeout", retry_after=self._retry_after) from None
        except aiohttp.ClientPayloadError as exc:
            raise AgentBadAnswerError("agent answer cut short", log_detail=str(exc)) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise AgentUnavailableError(
                "sidecar unavailable", retry_after=self._retry_after, log_detail=str(exc)
            ) from None

    def _raise_for(self, status: int, headers: Any, body: bytes) -> None:
        if status == 200:
            return
        retry_after = self._retry_after
        with contextlib.suppress(ValueError):
            retry_after = int(headers.get("Retry-After", retry_after))
        detail = body[:300].decode("utf-8", "replace")
        if status == 503:
            raise AgentUnavailableError(
                "agent unavailable", retry_after=retry_after, log_detail=detail
            )
        if status == 504:
            raise AgentTimeoutError("agent timeout", retry_after=retry_after, log_detail=detail)
        raise AgentBadAnswerError(f"agent answered HTTP {status}", log_detail=detail)

    async def get_quote(self, report_data: bytes, request_id: str) -> AgentQuote:
        """Ask for a quote over exactly these 64 bytes."""
        payload = orjson.dumps({"report_data": report_data.hex()})
        status, headers, body = await self._post("GetQuote", payload, request_id, self._timeout)
        self._raise_for(status, headers, body)
        answer = decode_quote_answer(body)
        return AgentQuote(
            quote=answer.quote,
            event_log=answer.event_log,
            report_data=answer.report_data,
            vm_config=answer.vm_config,
            queue_ms=_float_header(headers, QUEUE_MS_HEADER),
            agent_ms=_float_header(headers, AGENT_MS_HEADER),
        )

    async def info(self, request_id: str, limit_s: float) -> dict[str, Any]:
        """Ask the agent (through the sidecar) for /Info: the readiness probe."""
        status, headers, body = await self._post("Info", b"{}", request_id, limit_s)
        self._raise_for(status, headers, body)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AgentBadAnswerError("agent Info answer is not JSON") from None
        if not isinstance(doc, dict):
            raise AgentBadAnswerError("agent Info answer is not a JSON object")
        return doc
