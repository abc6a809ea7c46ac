"""Fetch a custom domain's `/evidences/` and the certificate it serves, over one TLS connection.

Behind a dstack gateway an app id routes each new connection to any healthy replica, and each
replica runs its own dstack-ingress with its own key, certificate and quote. So the files and the
certificate are taken from the same connection: a connector records the leaf of every connection
a request uses, and a fetch that spanned connections presenting different leaves is retried.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .evidences import (
    MAX_FILE,
    QUOTE_JSON,
    SHA256SUM,
    EvidencesError,
    EvidenceSet,
    listed_names,
    read_evidences_dir,
)
from .http_client import AnswerTooLarge, HttpFailure, get_capped, web_url
from .network_defaults import DEFAULT_TIMEOUT
from .pipeline import FetchError

ATTEMPTS = 3


def parse_connect_to(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[addr]:PORT`) -> (host, port); EvidencesError otherwise."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EvidencesError(f"--connect-to {text!r} is not HOST:PORT")
    return host, int(port_text)


def evidences_base(url: str) -> URL:
    """`https://DOMAIN[:PORT][/path]` -> the URL of its evidence folder (default `/evidences/`)."""
    try:
        parsed = web_url(url, "--evidences")
    except HttpFailure as exc:
        raise EvidencesError(str(exc)) from None
    if parsed.scheme != "https":
        raise EvidencesError(f"--evidences {url!r}: an https:// URL with a host is required")
    path = parsed.path if parsed.path not in ("", "/") else "/evidences/"
    return parsed.with_path(path.rstrip("/") + "/").with_query(None).with_fragment(None)


class _ConnectTo(AbstractResolver):
    """Resolve one domain to a fixed HOST:PORT (like curl --connect-to); SNI and Host stay."""

    def __init__(self, domain: str, host: str, port: int) -> None:
        self._domain = domain
        self._host = host
        self._port = port
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Addresses of `host`; the overridden domain's are those of HOST:PORT."""
        if host != self._domain:
            return await self._inner.resolve(host, port, family)
        found = await self._inner.resolve(self._host, self._port, family)
        return [
            ResolveResult(
                hostname=host,
                host=r["host"],
                port=r["port"],
                family=r["family"],
                proto=r["proto"],
                flags=r["flags"],
            )
            for r in found
        ]

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def fetch_context(ca_file: str | None) -> ssl.SSLContext:
    """TLS for the fetch: verify chain and name against `ca_file`, or (default) verify nothing;
    the files are authenticated by the quote and the served leaf is checked by its own step."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _LeafRecorder(aiohttp.TCPConnector):
    """A one-connection connector that records, per request, its connection and the DER leaf
    certificate that connection presented."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(limit=1, **kwargs)
        self.used: list[tuple[int, bytes | None]] = []

    async def connect(
        self,
        req: Any,
        traces: Any,
        timeout: Any,  # noqa: ASYNC109 - the signature of aiohttp's connect
    ) -> aiohttp.connector.Connection:
        """The pooled or new connection for `req`, recorded with its leaf."""
        connection = await super().connect(req, traces, timeout)
        transport = connection.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        leaf = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.used.append((id(connection.protocol), bytes(leaf) if leaf else None))
        return connection


@dataclass
class _Fetched:
    files: dict[str, bytes] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    leaves: list[bytes | None] = field(default_factory=list)
    connections: int = 0


async def _get_file(session: aiohttp.ClientSession, url: URL) -> tuple[bytes | None, str]:
    """Body of a 200 answer, or None and why (a transport failure is a FetchError)."""
    try:
        answer = await get_capped(session, url, MAX_FILE)
    except AnswerTooLarge:
        return None, f"larger than {MAX_FILE} bytes"
    except HttpFailure as exc:
        raise FetchError(str(exc)) from None
    if answer.status != 200:
        return None, f"HTTP {answer.status}"
    return answer.body, ""


async def _fetch_once(base: URL, connector: _LeafRecorder, seconds: float) -> _Fetched:
    fetched = _Fetched()
    client_timeout = aiohttp.ClientTimeout(total=seconds)
    async with aiohttp.ClientSession(
        connector=connector, connector_owner=False, timeout=client_timeout
    ) as session:
        for required in (SHA256SUM, QUOTE_JSON):
            body, why = await _get_file(session, base / required)
            if body is None:
                raise FetchError(f"GET {base / required}: {why}")
            fetched.files[required] = body
        for name in listed_names(fetched.files):
            body, why = await _get_file(session, base / name)
            if body is None:
                fetched.unreadable[name] = why
            else:
                fetched.files[name] = body
    fetched.leaves = [leaf for _, leaf in connector.used]
    fetched.connections = len({key for key, _ in connector.used})
    return fetched


def obtain_evidences(
    url: str | None,
    directory: str | None,
    *,
    domain: str | None,
    connect_to: str | None,
    ca_file: str | None,
    request_timeout: float,
) -> EvidenceSet:
    """The evidences of --evidences URL (fetched) or --evidences-dir DIRECTORY (read), with the
    options that apply to each; EvidencesError, FetchError or OSError (exit code 2)."""
    if directory is not None:
        return read_evidences_dir(Path(directory), domain)
    if url is None:
        raise EvidencesError("give --evidences URL or --evidences-dir DIR")
    address = parse_connect_to(connect_to) if connect_to else None
    if ca_file is not None and not Path(ca_file).is_file():
        raise EvidencesError(f"cannot read {ca_file}: no such file")
    fetching = fetch_evidences(
        url, connect_to=address, ca_file=ca_file, request_timeout=request_timeout
    )
    return asyncio.run(fetching)


async def fetch_evidences(
    url: str,
    *,
    connect_to: tuple[str, int] | None = None,
    ca_file: str | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> EvidenceSet:
    """GET sha256sum.txt, quote.json and every listed file from `url`'s evidence folder, and the
    leaf certificate of the connection they came over (at `connect_to` if given). A fetch that
    saw different leaves on different connections (replicas) is tried again, up to ATTEMPTS
    times. Raises FetchError or EvidencesError (exit code 2)."""
    base = evidences_base(url)
    domain = base.raw_host or ""
    context = fetch_context(ca_file)
    for _ in range(ATTEMPTS):
        resolver = _ConnectTo(domain, *connect_to) if connect_to is not None else None
        connector = _LeafRecorder(ssl=context, resolver=resolver)
        try:
            fetched = await _fetch_once(base, connector, request_timeout)
        finally:
            await connector.close()
            if resolver is not None:
                await resolver.close()
        if len(set(fetched.leaves)) == 1:
            break
    else:
        raise FetchError(
            f"{domain} presented different certificates on the connections of one fetch, "
            f"{ATTEMPTS} times (replicas that do not keep a connection open?)"
        )
    leaf = fetched.leaves[0]
    if leaf is None:
        raise FetchError(f"TLS handshake with {domain}: no certificate presented")
    return EvidenceSet(
        source=str(base),
        domain=domain,
        files=fetched.files,
        unreadable=fetched.unreadable,
        served_leaf=leaf,
        chain_verified=ca_file is not None,
        connected_to=f"{connect_to[0]}:{connect_to[1]}" if connect_to is not None else None,
        connections=fetched.connections,
    )
