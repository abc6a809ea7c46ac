"""Custom-domain TLS evidences: fetch or read `/evidences/`, see the served certificate, check both.

dstack-ingress publishes `acme-account.json`, `cert-<domain>.pem`, `sha256sum.txt` (coreutils
format) and `quote.json` (a GetQuote or Tappd RawQuote response whose report_data is
sha256(sha256sum.txt) followed by 32 zero bytes). The quote step chain proves the CVM; the steps
here prove the files are what it quoted and that the domain serves the quoted certificate.
"""

from __future__ import annotations

import errno
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oauth3.attestation import AttestationError, load_evidence

from .errors import VerifierError
from .files import FileTooLarge, read_regular_file
from .network_defaults import DEFAULT_TIMEOUT
from .pipeline import CollateralSource, verify_evidence
from .step_basics import Evidence, VerifyOptions, fail, guarded
from .verdict import EvidenceStep, Outcome, StepResult, Verdict

SHA256SUM = "sha256sum.txt"
QUOTE_JSON = "quote.json"
ACME_ACCOUNT = "acme-account.json"
LEGACY_CERT = "cert.pem"
MAX_FILE = 1 << 20
MAX_LISTED = 64
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.*@+-]+")


class EvidencesError(VerifierError):
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
    connections: int = 1


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


def cert_files_for(domain: str, names: Sequence[str]) -> list[str]:
    """The listed certificate files that may serve `domain`, in order of preference:
    `cert-<domain>.pem`, a wildcard's `cert-*.<parent>.pem`, the first dstack-ingress
    version's single `cert.pem`."""
    candidates = [f"cert-{domain}.pem"]
    if "." in domain:
        candidates.append(f"cert-*.{domain.split('.', 1)[1]}.pem")
    candidates.append(LEGACY_CERT)
    return [c for c in candidates if c in names]


def cert_file_for(domain: str, names: Sequence[str]) -> str | None:
    """The preferred listed certificate file for `domain` (see cert_files_for), or None."""
    return next(iter(cert_files_for(domain, names)), None)


def domain_of_dir(directory: Path) -> str:
    """The domain of the only `cert-<domain>.pem` in a directory; EvidencesError otherwise."""
    found = sorted(p.name for p in directory.glob("cert-*.pem"))
    if len(found) != 1:
        listed = ", ".join(found) if found else "none"
        raise EvidencesError(f"give --domain: {directory} holds {len(found)} cert-*.pem ({listed})")
    return found[0].removeprefix("cert-").removesuffix(".pem")


def _why(exc: OSError | FileTooLarge) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a symbolic link (saved evidences are plain files)"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def read_evidences_dir(directory: Path, domain: str | None) -> EvidenceSet:
    """Read saved evidences: sha256sum.txt, quote.json and every file sha256sum.txt lists.
    Raises EvidencesError (or OSError) when sha256sum.txt or quote.json cannot be read."""
    if not directory.is_dir():
        raise EvidencesError(f"{directory} is not a directory")
    name = domain if domain is not None else domain_of_dir(directory)
    files: dict[str, bytes] = {}
    for required in (SHA256SUM, QUOTE_JSON):
        try:
            files[required] = read_regular_file(directory / required, MAX_FILE)
        except FileNotFoundError:
            raise EvidencesError(f"{directory} has no {required}") from None
        except FileTooLarge as exc:
            raise EvidencesError(str(exc)) from None
        except OSError as exc:
            raise EvidencesError(f"{directory / required}: {_why(exc)}") from None
    unreadable: dict[str, str] = {}
    for listed in listed_names(files):
        try:
            files[listed] = read_regular_file(directory / listed, MAX_FILE)
        except (OSError, FileTooLarge) as exc:
            unreadable[listed] = _why(exc)
    return EvidenceSet(source=str(directory), domain=name, files=files, unreadable=unreadable)


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


def _quoted_match(
    served: x509.Certificate, names: list[str], files: Mapping[str, bytes]
) -> tuple[str, x509.Certificate, str] | None:
    """The listed certificate file whose leaf the server presented (`leaf`), else the first
    whose leaf has the served public key (`public_key`, a re-issue); None if neither. Every
    candidate counts, so a stale `cert-<domain>.pem` beside the current wildcard one is no
    false refusal."""
    by_key: tuple[str, x509.Certificate, str] | None = None
    for name in names:
        quoted = x509.load_pem_x509_certificates(files[name])[0]
        if served.public_bytes(Encoding.DER) == quoted.public_bytes(Encoding.DER):
            return name, quoted, "leaf"
        if by_key is None and _spki(served) == _spki(quoted):
            by_key = (name, quoted, "public_key")
    return by_key


def check_tls(evidences: EvidenceSet) -> StepResult:
    """The leaf the domain served equals the first certificate of a listed cert file for the
    domain (or, reported as the weaker match, has its public key) and names the domain."""
    if evidences.served_leaf is None:
        return StepResult(
            EvidenceStep.TLS_CERTIFICATE,
            Outcome.SKIPPED,
            f"NOT CHECKED: saved evidences, no TLS handshake with {evidences.domain}",
            {"domain": evidences.domain},
        )
    names = [
        n
        for n in cert_files_for(evidences.domain, listed_names(evidences.files))
        if n in evidences.files
    ]
    details: dict[str, Any] = {
        "domain": evidences.domain,
        "certificate_files": names,
        "chain_verified": evidences.chain_verified,
        "connected_to": evidences.connected_to,
        "connections": evidences.connections,
    }
    if not names:
        raise fail(f"no listed certificate file for {evidences.domain}", details)
    served = x509.load_der_x509_certificate(evidences.served_leaf)
    details["served_leaf_sha256"] = _fingerprint(served)
    found = _quoted_match(served, names, evidences.files)
    if found is None:
        raise fail(
            f"{evidences.domain} served certificate {_fingerprint(served)[:16]}…, not the "
            f"leaf of {' or '.join(names)} nor one with its key",
            details,
        )
    cert_name, quoted, match = found
    details.update(certificate_file=cert_name, quoted_leaf_sha256=_fingerprint(quoted))
    if not names_domain(served, evidences.domain):
        raise fail(
            f"the served certificate does not name {evidences.domain} in subjectAltName", details
        )
    details.update(match=match, not_after=_utc(quoted.not_valid_after_utc))
    what = (
        f"the served leaf is {cert_name}'s leaf"
        if match == "leaf"
        else f"the served leaf differs from {cert_name}'s but has its public key"
    )
    unverified = (
        ""
        if evidences.chain_verified
        else "; the fetch did not verify the web-PKI chain: this step is what ties "
        f"{evidences.domain} to the evidences"
    )
    return StepResult(
        EvidenceStep.TLS_CERTIFICATE,
        Outcome.PASS,
        f"{what} ({_fingerprint(quoted)[:16]}…), on the connection the files came over{unverified}",
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
