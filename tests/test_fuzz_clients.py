"""The fuzz harness of oauth3-verify and oauth3-inspect (issue 22): every entry point gets
structured-but-wrong inputs and must keep the promises in tests/fuzzing.check_output.

Entry points: --dstack-quote on GetQuote JSON (and its event log), --bundle, oauth3-inspect,
--evidences-dir, the policy loader (--policy), a URL served by a hostile server, and the PCCS
client (--pccs against a hostile PCCS). oauth3-measure and oauth3-phala have their own files.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import (
    INSPECT_EXITS,
    VERIFY_EXITS,
    check_output,
    fuzzed,
    json_text,
    mutated_json,
    odd_text,
    run_inspect,
    run_verify,
    with_file,
)

VECTORS = Path(__file__).parent / "vectors"
REPORT = VECTORS / "dstack-head/verifier-fixtures/quote-report.json"
# a failing bundle's repr is large; the warning must not hide the failure it reports
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
COLLATERAL = VECTORS / "dcap-qvl/sample/tdx_quote_outdated_collateral.json"
INSIDE = "2026-03-20T10:41:14Z"
GETQUOTE: dict[str, Any] = json.loads(REPORT.read_text())
QUOTE = bytes.fromhex(GETQUOTE["quote"])
EVENTS: list[Any] = json.loads(GETQUOTE["event_log"])
COLLATERAL_DOC: dict[str, Any] = json.loads(COLLATERAL.read_text())
OFFLINE = ["--collateral", str(COLLATERAL), "--at", INSIDE]
BUNDLE: dict[str, Any] = {
    "format": "oauth3-evidence-bundle/v2",
    "url": "https://app.example",
    "fetchedAt": INSIDE,
    "nonce": "11" * 32,
    "info": base64.b64encode(b'{"name":"oauth3"}').decode(),
    "attestation": {
        "layout": "oauth3/v1",
        "quote": base64.b64encode(QUOTE).decode(),
        "eventLog": GETQUOTE["event_log"],
        "reportData": GETQUOTE["report_data"],
        "nonce": "11" * 32,
        "vmConfig": GETQUOTE.get("vm_config", ""),
        "generatedAt": INSIDE,
    },
    "collateral": COLLATERAL_DOC,
    "collateralIdentity": None,
}
POLICY: dict[str, Any] = {
    "format": 1,
    "app": {"compose_hashes": ["ab" * 32], "app_ids": []},
    "platform": [{"name": "p", **{k: "cd" * 48 for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")}}],
    "tcb": {"allowed_statuses": ["UpToDate"], "allowed_advisories": []},
    "os": {"allow_dev": False},
}


@pytest.fixture
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fuzzed
@given(document=json_text(GETQUOTE))
def test_fuzz_verify_getquote_json(files: Path, document: bytes) -> None:
    check_output(
        run_verify(["--dstack-quote", with_file(files, "q.json", document), *OFFLINE]), VERIFY_EXITS
    )


@fuzzed
@given(events=mutated_json(EVENTS))
def test_fuzz_verify_event_logs(files: Path, events: Any) -> None:
    document = {**GETQUOTE, "event_log": json.dumps(events)}
    path = with_file(files, "q.json", json.dumps(document).encode("utf-8", "surrogatepass"))
    check_output(run_verify(["--dstack-quote", path, *OFFLINE]), VERIFY_EXITS)


@fuzzed
@given(document=json_text(BUNDLE))
def test_fuzz_verify_bundles(files: Path, document: bytes) -> None:
    path = with_file(files, "bundle.json", document)
    check_output(run_verify(["--bundle", path, "--at", INSIDE]), VERIFY_EXITS)


raw_quotes = st.builds(
    lambda cut, flips: bytes(b ^ flips.get(i, 0) for i, b in enumerate(QUOTE[:cut])),
    st.integers(0, len(QUOTE)),
    st.dictionaries(st.integers(0, len(QUOTE) - 1), st.integers(1, 255), max_size=4),
)


@fuzzed
@given(data=json_text(GETQUOTE) | raw_quotes | raw_quotes.map(lambda q: q.hex().encode()))
def test_fuzz_inspect(files: Path, data: bytes) -> None:
    check_output(run_inspect([with_file(files, "evidence", data)]), INSPECT_EXITS)


@fuzzed
@given(data=raw_quotes)
def test_fuzz_verify_raw_quotes(files: Path, data: bytes) -> None:
    path = with_file(files, "quote.bin", data)
    check_output(run_verify(["--dstack-quote", path, *OFFLINE]), VERIFY_EXITS)


def _sha256sum(named: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in named.items()).encode(
        "utf-8", "surrogatepass"
    )


evidence_names = (
    st.sampled_from(
        ["cert-d.test.pem", "cert-*.test.pem", "cert.pem", "acme-account.json", "../x", "a b", "é"]
    )
    | odd_text
)


@fuzzed
@given(
    listed=st.dictionaries(evidence_names, st.binary(max_size=64), max_size=4),
    quote=json_text(GETQUOTE),
    sums=st.none() | st.binary(max_size=200),
)
def test_fuzz_verify_evidences_dirs(
    files: Path, listed: dict[str, bytes], quote: bytes, sums: bytes | None
) -> None:
    directory = files / f"ev{len(list(files.iterdir()))}"
    directory.mkdir()
    for name, data in listed.items():
        if "/" not in name and name not in ("", ".", "..") and "\x00" not in name:
            (directory / os.fsdecode(name.encode("utf-8", "surrogatepass"))).write_bytes(data)
    (directory / "quote.json").write_bytes(quote)
    (directory / "sha256sum.txt").write_bytes(sums if sums is not None else _sha256sum(listed))
    args = ["--evidences-dir", str(directory), "--domain", "d.test", *OFFLINE]
    check_output(run_verify(args), VERIFY_EXITS)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # the generators' deep nesting becomes TOML arrays
        deep = len(value) > 100 and set(value) == {"["}
        return value + "]" * len(value) if deep else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    return '""'


def to_toml(document: Any) -> str:
    """A rough TOML writer for generated policies: tables, arrays of tables, inline values."""
    if not isinstance(document, dict):
        return f"x = {_toml_value(document)}\n"
    lines = [
        f"{json.dumps(k)} = {_toml_value(v)}"
        for k, v in document.items()
        if not isinstance(v, dict | list) and v is not None
    ]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [
                f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
            ]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                lines.append(f"[[{json.dumps(key)}]]")
                lines += [
                    f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None
                ]
        elif isinstance(value, list):
            lines.insert(0, f"{json.dumps(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


@fuzzed
@given(policy=mutated_json(POLICY))
def test_fuzz_policy_loader(files: Path, policy: Any) -> None:
    text = to_toml(policy).encode("utf-8", "surrogatepass")
    path = with_file(files, "policy.toml", text)
    check_output(
        run_verify(["--dstack-quote", str(REPORT), "--policy", path, *OFFLINE]), VERIFY_EXITS
    )


# ---------------------------------------------------------------- hostile servers


@dataclass
class Hostile:
    """An HTTP server on 127.0.0.1 in its own thread answering each path as scripted."""

    port: int = 0
    tls_port: int = 0
    answers: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _tls_context(directory: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate for d.test and *.test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("d.test"), x509.DNSName("*.test")]), False
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    server = Hostile()
    tls = _tls_context(tmp_path_factory.mktemp("tls"))
    started = threading.Event()
    loop = asyncio.new_event_loop()

    async def answer(request: web.Request) -> web.Response:
        status, headers, body = server.answers.get(request.path, (404, {}, b""))
        return web.Response(status=status, headers=headers, body=body)

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        server.port, server.tls_port = (address[1] for address in runner.addresses)
        return runner

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    yield server
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


statuses = st.sampled_from([200, 200, 200, 204, 301, 302, 307, 404, 500])
locations = (
    st.sampled_from(
        [
            "/info",
            "/attestation",
            "http://127.0.0.2:1/info",
            "http://a..b/",
            "http://[::1/",
            "",
            "//x",
        ]
    )
    | odd_text
)


@st.composite
def answers(draw: st.DrawFn, body: st.SearchStrategy[bytes]) -> tuple[int, dict[str, str], bytes]:
    status = draw(statuses)
    headers = {}
    if status in (301, 302, 307):
        location = draw(locations)
        headers["Location"] = (
            location.encode("utf-8", "replace")
            .decode("latin-1", "replace")
            .replace("\r", "")
            .replace("\n", "")
        )
    return status, headers, draw(body)


ATTESTATION = {
    "layout": "oauth3/v1",
    "quote": base64.b64encode(QUOTE).decode(),
    "eventLog": GETQUOTE["event_log"],
    "reportData": GETQUOTE["report_data"],
    "nonce": "11" * 32,
    "vmConfig": "",
    "generatedAt": INSIDE,
}


@fuzzed
@given(
    info=answers(st.binary(max_size=64)),
    attestation=answers(json_text(ATTESTATION) | st.binary(max_size=64)),
)
def test_fuzz_verify_url_against_a_hostile_service(
    hostile: Hostile,
    info: tuple[int, dict[str, str], bytes],
    attestation: tuple[int, dict[str, str], bytes],
) -> None:
    hostile.answers = {"/info": info, "/attestation": attestation}
    args = [hostile.url, *OFFLINE[:2], "--timeout", "5", "--no-batch"]
    check_output(run_verify(args), VERIFY_EXITS)


def _chain(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@st.composite
def pccs_answers(draw: st.DrawFn) -> dict[str, tuple[int, dict[str, str], bytes]]:
    c = COLLATERAL_DOC
    pck_crl = bytes.fromhex(c["pck_crl"])
    cut = draw(st.integers(0, len(pck_crl)))
    pck_body = draw(
        st.sampled_from(
            [pck_crl, pck_crl[:cut], pck_crl.hex().encode(), b"-----BEGIN X509 CRL-----\nAA\n"]
        )
    )
    chain = draw(
        st.sampled_from(
            [c["pck_crl_issuer_chain"], "garbage", "%ZZ", c["pck_crl_issuer_chain"][:100]]
        )
    )
    tcb = {"tcbInfo": json.loads(c["tcb_info"]), "signature": c["tcb_info_signature"]}
    qe = {"enclaveIdentity": json.loads(c["qe_identity"]), "signature": c["qe_identity_signature"]}
    base = "/sgx/certification/v4"
    return {
        f"{base}/pckcrl": (draw(statuses), {"SGX-PCK-CRL-Issuer-Chain": _chain(chain)}, pck_body),
        "/tdx/certification/v4/tcb": (
            200,
            {"TCB-Info-Issuer-Chain": _chain(c["tcb_info_issuer_chain"])},
            draw(json_text(tcb)),
        ),
        "/tdx/certification/v4/qe/identity": (
            200,
            {"SGX-Enclave-Identity-Issuer-Chain": _chain(c["qe_identity_issuer_chain"])},
            draw(json_text(qe)),
        ),
        f"{base}/rootcacrl": draw(
            answers(
                st.sampled_from([c["root_ca_crl"].encode(), b"zz", b""]) | st.binary(max_size=32)
            )
        ),
    }


@fuzzed
@given(script=pccs_answers())
def test_fuzz_pccs_client_against_a_hostile_pccs(
    hostile: Hostile, script: dict[str, tuple[int, dict[str, str], bytes]]
) -> None:
    hostile.answers = script
    args = ["--dstack-quote", str(REPORT), "--pccs", hostile.url, "--at", INSIDE, "--timeout", "5"]
    check_output(run_verify(args), VERIFY_EXITS)


@st.composite
def evidence_answers(draw: st.DrawFn) -> dict[str, tuple[int, dict[str, str], bytes]]:
    listed = draw(st.dictionaries(evidence_names, st.binary(max_size=64), max_size=3))
    sums = draw(st.just(_sha256sum(listed)) | st.binary(max_size=100))
    script = {
        "/evidences/sha256sum.txt": draw(answers(st.just(sums))),
        "/evidences/quote.json": draw(answers(json_text(GETQUOTE))),
    }
    for name, data in listed.items():
        path = "/evidences/" + urllib.parse.quote(name.encode("utf-8", "surrogatepass"))
        script[path] = draw(answers(st.just(data)))
    return script


@fuzzed
@given(script=evidence_answers())
def test_fuzz_verify_evidences_against_a_hostile_https_server(
    hostile: Hostile, script: dict[str, tuple[int, dict[str, str], bytes]]
) -> None:
    hostile.answers = script
    args = ["--evidences", "https://d.test", "--connect-to", f"127.0.0.1:{hostile.tls_port}"]
    check_output(run_verify([*args, *OFFLINE, "--timeout", "5"]), VERIFY_EXITS)
