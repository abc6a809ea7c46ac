"""Custom-domain TLS evidences: fetch or read `/evidences/`, see the served certificate, check both.

dstack-ingress publishes `acme-account.json`, `cert-<domain>.pem`, `sha256sum.txt` (coreutils
format) and `quote.json` (a GetQuote or Tappd RawQuote response whose report_data is
sha256(sha256sum.txt) followed by 32 zero bytes). The quote step chain proves the CVM; the steps
here prove the files are what it quoted and that the domain serves the quoted certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yarl import URL

from oauth3.attestation import AttestationError, load_evidence

from .fetch import CollateralSource, FetchError, verify_evidence
from .files import FileTooLarge, read_capped
from .http_client import DEFAULT_TIMEOUT, BodyTooLarge, read_body
from .steps import Evidence, VerifyOptions, fail, guarded
from .verdict import EvidenceStep, Outcome, StepResult, Verdict

SHA256SUM = "sha256sum.txt"
QUOTE_JSON = "quote.json"
ACME_ACCOUNT = "acme-account.json"
LEGACY_CERT = "cert.pem"
MAX_FILE = 1 << 20
MAX_LISTED = 64
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.*@+-]+")


class EvidencesError(Exception):
    """Evidence files could not be fetched or read, or the command was misused (exit code 2)."""


class ChecksumFormatError(ValueError):
    """sha256sum.txt is not in coreutils format or names a file outside the directory."""


@dataclass(frozen=True, slots=True)
class EvidenceSet:
    """One `/evidences/` directory as read: its files by name, files it lists but could not be
    read (with why), and the DER leaf certificate the domain presented (None when offline)."""

    source: str
    domain: str
    files: Mapping[str, bytes]
    unreadable: Mapping[str, str]
    served_leaf: bytes | None = None
    chain_verified: bool = False
    connected_to: str | None = None


def parse_sha256sum(data: bytes) -> list[tuple[str, bytes]]:
    """`(name, digest)` per line of a coreutils checksum file; ChecksumFormatError if malformed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ChecksumFormatError(f"{SHA256SUM} is not UTF-8") from None
    entries: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ChecksumFormatError(f"{SHA256SUM} line {number} is not '<sha256 hex>  <name>'")
        name = match.group(2)
        if not is_safe_name(name):
            raise ChecksumFormatError(f"{SHA256SUM} line {number} names {name!r}, not a plain file")
        if any(name == seen for seen, _ in entries):
            raise ChecksumFormatError(f"{SHA256SUM} lists {name!r} twice")
        entries.append((name, bytes.fromhex(match.group(1))))
    if not entries:
        raise ChecksumFormatError(f"{SHA256SUM} lists no files")
    if len(entries) > MAX_LISTED:
        raise ChecksumFormatError(f"{SHA256SUM} lists more than {MAX_LISTED} files")
    return entries


def is_safe_name(name: str) -> bool:
    """A plain file name inside the evidence directory (no separators, not `.` or `..`)."""
    return _SAFE_NAME.fullmatch(name) is not None and name.strip(".") != ""


def listed_names(files: Mapping[str, bytes]) -> list[str]:
    """The names sha256sum.txt lists, or none if it is absent or malformed."""
    try:
        return [name for name, _ in parse_sha256sum(files.get(SHA256SUM, b""))]
    except ChecksumFormatError:
        return []


def cert_file_for(domain: str, names: Sequence[str]) -> str | None:
    """The listed certificate file for `domain`: `cert-<domain>.pem`, a wildcard's
    `cert-*.<parent>.pem`, or the first dstack-ingress version's single `cert.pem`."""
    candidates = [f"cert-{domain}.pem"]
    if "." in domain:
        candidates.append(f"cert-*.{domain.split('.', 1)[1]}.pem")
    candidates.append(LEGACY_CERT)
    return next((c for c in candidates if c in names), None)


def domain_of_dir(directory: Path) -> str:
    """The domain of the only `cert-<domain>.pem` in a directory; EvidencesError otherwise."""
    found = sorted(p.name for p in directory.glob("cert-*.pem"))
    if len(found) != 1:
        listed = ", ".join(found) if found else "none"
        raise EvidencesError(f"give --domain: {directory} holds {len(found)} cert-*.pem ({listed})")
    return found[0].removeprefix("cert-").removesuffix(".pem")


def read_evidences_dir(directory: Path, domain: str | None) -> EvidenceSet:
    """Read saved evidences: sha256sum.txt, quote.json and every file sha256sum.txt lists.
    Raises EvidencesError (or OSError) when sha256sum.txt or quote.json cannot be read."""
    if not directory.is_dir():
        raise EvidencesError(f"{directory} is not a directory")
    name = domain if domain is not None else domain_of_dir(directory)
    files: dict[str, bytes] = {}
    for required in (SHA256SUM, QUOTE_JSON):
        try:
            files[required] = read_capped(directory / required, MAX_FILE)
        except FileNotFoundError:
            raise EvidencesError(f"{directory} has no {required}") from None
        except FileTooLarge as exc:
            raise EvidencesError(str(exc)) from None
    unreadable: dict[str, str] = {}
    for listed in listed_names(files):
        try:
            files[listed] = read_capped(directory / listed, MAX_FILE)
        except (OSError, FileTooLarge) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            unreadable[listed] = reason
    return EvidenceSet(source=str(directory), domain=name, files=files, unreadable=unreadable)


def parse_connect_to(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[addr]:PORT`) -> (host, port); EvidencesError otherwise."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EvidencesError(f"--connect-to {text!r} is not HOST:PORT")
    return host, int(port_text)


def evidences_base(url: str) -> URL:
    """`https://DOMAIN[:PORT][/path]` -> the URL of its evidence folder (default `/evidences/`)."""
    parsed = URL(url)
    if parsed.scheme != "https" or not parsed.host:
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


async def served_leaf(
    domain: str, address: tuple[str, int], context: ssl.SSLContext, request_timeout: float
) -> bytes:
    """The DER leaf certificate `address` presents in a TLS handshake for SNI `domain`."""
    where = f"TLS handshake with {domain} at {address[0]}:{address[1]}"
    try:
        async with asyncio.timeout(request_timeout):
            _, writer = await asyncio.open_connection(*address, ssl=context, server_hostname=domain)
    except (OSError, TimeoutError) as exc:
        raise FetchError(f"{where}: {type(exc).__name__} {exc}".rstrip()) from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        leaf = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(request_timeout):
                await writer.wait_closed()
    if not leaf:
        raise FetchError(f"{where}: no certificate presented")
    return bytes(leaf)


async def _get_file(session: aiohttp.ClientSession, url: URL) -> tuple[bytes | None, str]:
    """Body of a 200 answer, or None and why."""
    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                return None, f"HTTP {response.status}"
            body = await read_body(response, MAX_FILE)
    except BodyTooLarge:
        return None, f"larger than {MAX_FILE} bytes"
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
        raise FetchError(f"GET {url}: {type(exc).__name__} {exc}".rstrip()) from None
    return body, ""


async def fetch_evidences(
    url: str,
    *,
    connect_to: tuple[str, int] | None = None,
    ca_file: str | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> EvidenceSet:
    """GET sha256sum.txt, quote.json and every listed file from `url`'s evidence folder, then
    take the leaf certificate of a TLS handshake with the domain (at `connect_to` if given).
    Raises FetchError or EvidencesError (exit code 2)."""
    base = evidences_base(url)
    domain = base.host or ""
    address = connect_to if connect_to is not None else (domain, base.port or 443)
    context = fetch_context(ca_file)
    resolver = _ConnectTo(domain, *connect_to) if connect_to is not None else None
    connector = aiohttp.TCPConnector(ssl=context, resolver=resolver)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    files: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for required in (SHA256SUM, QUOTE_JSON):
                body, why = await _get_file(session, base / required)
                if body is None:
                    raise FetchError(f"GET {base / required}: {why}")
                files[required] = body
            for name in listed_names(files):
                body, why = await _get_file(session, base / name)
                if body is None:
                    unreadable[name] = why
                else:
                    files[name] = body
    finally:
        if resolver is not None:
            await resolver.close()
    leaf = await served_leaf(domain, address, context, request_timeout)
    return EvidenceSet(
        source=str(base),
        domain=domain,
        files=files,
        unreadable=unreadable,
        served_leaf=leaf,
        chain_verified=ca_file is not None,
        connected_to=f"{connect_to[0]}:{connect_to[1]}" if connect_to is not None else None,
    )


def check_files(evidences: EvidenceSet) -> StepResult:
    """Every line of sha256sum.txt matches its file, and it covers the domain's certificate."""
    details: dict[str, Any] = {"domain": evidences.domain}
    try:
        entries = parse_sha256sum(evidences.files.get(SHA256SUM, b""))
    except ChecksumFormatError as exc:
        raise fail(str(exc), details) from None
    names = [name for name, _ in entries]
    details["listed"] = names
    bad: list[str] = []
    for name, digest in entries:
        data = evidences.files.get(name)
        if data is None:
            bad.append(f"{name} unreadable ({evidences.unreadable.get(name, 'absent')})")
        elif hashlib.sha256(data).digest() != digest:
            bad.append(f"{name} sha256 {hashlib.sha256(data).hexdigest()[:16]}… != listed")
    details["mismatched"] = bad
    if bad:
        raise fail(f"{SHA256SUM} does not match its files: {'; '.join(bad)}", details)
    cert = cert_file_for(evidences.domain, names)
    details["certificate_file"] = cert
    if cert is None:
        raise fail(f"{SHA256SUM} lists no certificate for {evidences.domain}", details)
    account = "" if ACME_ACCOUNT in names else f" (no {ACME_ACCOUNT} listed)"
    return StepResult(
        EvidenceStep.EVIDENCE_FILES,
        Outcome.PASS,
        f"{len(entries)} files match {SHA256SUM}, including {cert}{account}",
        details,
    )


def check_binding(
    evidences: EvidenceSet, report_data: bytes | None, declared: bytes | None
) -> StepResult:
    """report_data[0:32] == sha256(sha256sum.txt), [32:64] zero, and quote.json's own
    report_data field (if any) agrees with the quote."""
    if report_data is None:
        raise fail("the quote did not parse", {})
    digest = hashlib.sha256(evidences.files[SHA256SUM]).digest()
    details: dict[str, Any] = {
        "sha256sum_sha256": digest.hex(),
        "report_data": report_data.hex(),
    }
    if declared is not None and declared.ljust(64, b"\0") != report_data:
        raise fail(f"{QUOTE_JSON}'s report_data differs from the quote's", details)
    if report_data[:32] != digest:
        raise fail(
            f"report_data[0:32] {report_data[:32].hex()[:16]}… != sha256({SHA256SUM}) "
            f"{digest.hex()[:16]}…: the quote does not bind these files",
            details,
        )
    if any(report_data[32:]):
        raise fail("report_data[32:64] is not zero", details)
    return StepResult(
        EvidenceStep.EVIDENCE_BINDING,
        Outcome.PASS,
        f"report_data == sha256({SHA256SUM}) {digest.hex()[:16]}… ‖ 32 zero bytes",
        details,
    )


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def names_domain(cert: x509.Certificate, domain: str) -> bool:
    """The certificate's DNS subjectAltNames cover `domain` (one-label wildcards included)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = domain.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        pattern = name.lower().rstrip(".")
        if pattern == wanted:
            return True
        parent = wanted.split(".", 1)[1] if "." in wanted else None
        if pattern.startswith("*.") and parent == pattern[2:] and not wanted.startswith("*"):
            return True
    return False


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_tls(evidences: EvidenceSet) -> StepResult:
    """The leaf the domain served equals cert-<domain>.pem's first certificate (or, reported as
    the weaker match, has its public key) and names the domain."""
    if evidences.served_leaf is None:
        return StepResult(
            EvidenceStep.TLS_CERTIFICATE,
            Outcome.SKIPPED,
            f"NOT CHECKED: saved evidences, no TLS handshake with {evidences.domain}",
            {"domain": evidences.domain},
        )
    cert_name = cert_file_for(evidences.domain, listed_names(evidences.files))
    details: dict[str, Any] = {
        "domain": evidences.domain,
        "certificate_file": cert_name,
        "chain_verified": evidences.chain_verified,
        "connected_to": evidences.connected_to,
    }
    if cert_name is None or cert_name not in evidences.files:
        raise fail(f"no listed certificate file for {evidences.domain}", details)
    quoted = x509.load_pem_x509_certificates(evidences.files[cert_name])[0]
    details["quoted_leaf_sha256"] = _fingerprint(quoted)
    served = x509.load_der_x509_certificate(evidences.served_leaf)
    details["served_leaf_sha256"] = _fingerprint(served)
    if served.public_bytes(Encoding.DER) == quoted.public_bytes(Encoding.DER):
        match = "leaf"
    elif _spki(served) == _spki(quoted):
        match = "public_key"
    else:
        raise fail(
            f"{evidences.domain} served certificate {_fingerprint(served)[:16]}…, not the "
            f"leaf of {cert_name} ({_fingerprint(quoted)[:16]}…) nor one with its key",
            details,
        )
    if not names_domain(served, evidences.domain):
        raise fail(
            f"the served certificate does not name {evidences.domain} in subjectAltName", details
        )
    unverified = (
        ""
        if evidences.chain_verified
        else "; the fetch did not verify the web-PKI chain: this step is what ties "
        f"{evidences.domain} to the evidences"
    )
    details["match"] = match
    details["not_after"] = _utc(quoted.not_valid_after_utc)
    what = (
        f"the served leaf is {cert_name}'s leaf"
        if match == "leaf"
        else f"the served leaf differs from {cert_name}'s but has its public key"
    )
    return StepResult(
        EvidenceStep.TLS_CERTIFICATE,
        Outcome.PASS,
        f"{what} ({_fingerprint(quoted)[:16]}…){unverified}",
        details,
    )


def evidence_steps(
    evidences: EvidenceSet, report_data: bytes | None, declared: bytes | None
) -> tuple[StepResult, ...]:
    """The three evidence steps, each fail-closed."""
    binding = EvidenceStep.EVIDENCE_BINDING
    return (
        guarded(EvidenceStep.EVIDENCE_FILES, lambda: check_files(evidences)),
        guarded(binding, lambda: check_binding(evidences, report_data, declared)),
        guarded(EvidenceStep.TLS_CERTIFICATE, lambda: check_tls(evidences)),
    )


async def verify_evidences(
    evidences: EvidenceSet,
    options: VerifyOptions,
    source: CollateralSource,
    *,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> Verdict:
    """quote.json through the attestation steps, then the evidence steps. Raises EvidencesError
    when quote.json is no quote response, CollateralError or FetchError (exit code 2)."""
    try:
        loaded = load_evidence(evidences.files[QUOTE_JSON])
    except AttestationError as exc:
        raise EvidencesError(f"{QUOTE_JSON} from {evidences.source}: {exc}") from None
    vm_config = loaded.document.get("vm_config") if loaded.document is not None else None
    evidence = Evidence(
        quote=loaded.quote,
        event_log=loaded.event_log,
        origin="evidences",
        vm_config=vm_config if isinstance(vm_config, str) else None,
    )
    verdict, _ = await verify_evidence(evidence, options, source, request_timeout=request_timeout)
    extra = evidence_steps(evidences, verdict.report_data, loaded.report_data)
    return replace(verdict, steps=verdict.steps + extra)


def notes(evidences: EvidenceSet) -> list[str]:
    """What the reader must know about how the evidences were obtained."""
    said: list[str] = []
    if evidences.connected_to is not None:
        said.append(f"connected to {evidences.connected_to} for {evidences.domain} (--connect-to)")
    if evidences.served_leaf is not None and not evidences.chain_verified:
        said.append(
            "the fetch did NOT verify the web-PKI certificate chain (no --tls-ca): the files are "
            "authenticated by the quote, and tls_certificate ties the domain to them"
        )
    return said
