"""The service's client of the sidecar (over its unix socket): GetQuote, Info and the metrics
scrape, with answers decoded into types and failures mapped to typed errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from oauth3.attestation.response import QuotedEvidence
from oauth3.runtime.bodies import read_capped
from oauth3.runtime.bookkeeping import REQUEST_ID_HEADER
from oauth3.runtime.sidecar_protocol import (
    AGENT_MS_HEADER,
    GET_QUOTE_PATH,
    INFO_PATH,
    METRICS_PATH,
    QUEUE_MS_HEADER,
)

# the longest answer read whole from the sidecar (a quote with its event log, or the metrics
# text); one byte more is read to tell a longer one, which then fails to decode
MAX_ANSWER_BYTES = 1 << 20


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


def decode_quote_answer(
    body: bytes, *, queue_ms: float | None = None, agent_ms: float | None = None
) -> AgentQuote:
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
        queue_ms=queue_ms,
        agent_ms=agent_ms,
    )


@dataclass(frozen=True, slots=True)
class SidecarAnswer:
    """One HTTP answer of the sidecar: its status, body and the headers we read."""

    status: int
    body: bytes
    retry_after: str | None = None
    queue_ms: float | None = None
    agent_ms: float | None = None


def _milliseconds(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


class SidecarClient:
    """The service's one client of the sidecar, over its unix socket: quotes, the readiness
    probe and the metrics scrape share one ClientSession."""

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

    async def _request(
        self, method: str, path: str, payload: bytes | None, request_id: str, limit_s: float
    ) -> SidecarAnswer:
        """One request within `limit_s`; AgentTimeoutError, AgentBadAnswerError (cut short) or
        AgentUnavailableError (cannot connect) when there is no whole answer."""
        assert self._session is not None, "SidecarClient.start() was not awaited"
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
        try:
            async with asyncio.timeout(limit_s):
                async with self._session.request(
                    method, f"http://sidecar{path}", data=payload, headers=headers
                ) as response:
                    body = await read_capped(response, MAX_ANSWER_BYTES + 1)
                    return SidecarAnswer(
                        status=response.status,
                        body=body,
                        retry_after=response.headers.get("Retry-After"),
                        queue_ms=_milliseconds(response.headers, QUEUE_MS_HEADER),
                        agent_ms=_milliseconds(response.headers, AGENT_MS_HEADER),
                    )
        except TimeoutError:
            raise AgentTimeoutError("agent timeout", retry_after=self._retry_after) from None
        except aiohttp.ClientPayloadError as exc:
            raise AgentBadAnswerError("agent answer cut short", log_detail=str(exc)) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise AgentUnavailableError(
                "sidecar unavailable", retry_after=self._retry_after, log_detail=str(exc)
            ) from None

    def _raise_for(self, answer: SidecarAnswer) -> None:
        if answer.status == 200:
            return
        retry_after = self._retry_after
        if answer.retry_after is not None:
            with contextlib.suppress(ValueError):
                retry_after = int(answer.retry_after)
        detail = answer.body[:300].decode("utf-8", "replace")
        if answer.status == 503:
            raise AgentUnavailableError(
                "agent unavailable", retry_after=retry_after, log_detail=detail
            )
        if answer.status == 504:
            raise AgentTimeoutError("agent timeout", retry_after=retry_after, log_detail=detail)
        raise AgentBadAnswerError(f"agent answered HTTP {answer.status}", log_detail=detail)

    async def get_quote(self, report_data: bytes, request_id: str) -> AgentQuote:
        """Ask for a quote over exactly these 64 bytes."""
        payload = orjson.dumps({"report_data": report_data.hex()})
        answer = await self._request("POST", GET_QUOTE_PATH, payload, request_id, self._timeout)
        self._raise_for(answer)
        return decode_quote_answer(answer.body, queue_ms=answer.queue_ms, agent_ms=answer.agent_ms)

    async def agent_info(self, request_id: str, limit_s: float) -> dict[str, Any]:
        """Ask the agent (through the sidecar) for /Info: the readiness probe."""
        answer = await self._request("POST", INFO_PATH, b"{}", request_id, limit_s)
        self._raise_for(answer)
        try:
            doc = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            raise AgentBadAnswerError("agent Info answer is not JSON") from None
        if not isinstance(doc, dict):
            raise AgentBadAnswerError("agent Info answer is not a JSON object")
        return doc

    async def metrics_text(self, limit_s: float) -> bytes:
        """The sidecar's own Prometheus exposition, unchecked; AgentError when there is none."""
        answer = await self._request("GET", METRICS_PATH, None, "metrics-scrape", limit_s)
        self._raise_for(answer)
        return answer.body
