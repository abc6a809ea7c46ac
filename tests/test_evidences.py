"""`oauth3-verify --evidences`: simulator-quoted evidences served over real HTTPS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from oauth3.simulator.settings import default_app_compose
from oauth3.verifier.cli import run
from oauth3.verifier.evidences import (
    ChecksumFormatError,
    EvidencesError,
    EvidenceSet,
    cert_file_for,
    evidence_steps,
    names_domain,
    parse_sha256sum,
)
from oauth3.verifier.evidences_fetch import evidences_base, parse_connect_to
from oauth3.verifier.verdict import StepResult
from tests.fakes import short_socket_dir
from tests.stack import simulator_process
from tests.verifycli import pins_for, step, verify, verify_text

DOMAIN = "evidence.test"
CERT_FILE = f"cert-{DOMAIN}.pem"
WILDCARD = "*.test"
ACME = b'{"body":{"status":"valid","contact":["mailto:ops@evidence.test"]},"uri":"https://acme.invalid/acct/1"}\n'
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- certificates


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    """A certificate for `name` (self-signed when no issuer), valid around now."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Identity:
    """A served TLS identity: the chain (leaf first) as PEM and its key."""

    chain: bytes
    key: bytes


# ---------------------------------------------------------------- the simulator and evidences


async def _get_quote(sock: Path, report_data: bytes) -> bytes:
    """The simulator's GetQuote answer, byte for byte, as dstack-ingress saves quote.json."""
    connector = aiohttp.UnixConnector(path=str(sock))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            "http://dstack/GetQuote",
            data=orjson.dumps({"report_data": report_data.hex()}),
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.read()


def sha256sum(directory: Path, *names: str) -> bytes:
    """What coreutils sha256sum prints for these files (the format dstack-ingress publishes)."""
    done = subprocess.run(
        ["sha256sum", *names], cwd=directory, capture_output=True, check=True, timeout=10
    )
    return done.stdout


@dataclass
class World:
    """The simulator's DCAP files, TLS identities, and evidences it quoted."""

    root_ca: Path
    collateral: Path
    ca_pem: Path
    served: Identity
    other_key: Identity
    same_key: Identity
    wrong_name: Identity
    good: dict[str, bytes]
    quote_over_other_data: bytes
    wrong_name_files: dict[str, bytes]
    replica_b: Identity
    replica_b_files: dict[str, bytes]
    wildcard: Identity
    stale_beside_wildcard: dict[str, bytes]

    def check_args(self, *extra: str) -> list[str]:
        quote = bytes.fromhex(json.loads(self.good["quote.json"])["quote"])
        compose = hashlib.sha256(default_app_compose()).hexdigest()
        return [
            "--allow-simulated",
            "--root-ca",
            str(self.root_ca),
            "--collateral",
            str(self.collateral),
            *pins_for(quote, compose),
            *extra,
        ]


def _evidence_dir(directory: Path, cert_pem: bytes) -> dict[str, bytes]:
    return _evidence_dir_with(directory, {CERT_FILE: cert_pem})


def _evidence_dir_with(directory: Path, certificates: dict[str, bytes]) -> dict[str, bytes]:
    directory.mkdir()
    (directory / "acme-account.json").write_bytes(ACME)
    for name, cert_pem in certificates.items():
        (directory / name).write_bytes(cert_pem)
    sums = sha256sum(directory, "acme-account.json", *certificates)
    return {"acme-account.json": ACME, **certificates, "sha256sum.txt": sums}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Start the real simulator process, quote the evidences with it, and stop it."""
    base = tmp_path_factory.mktemp("evidences")
    sock_dir = short_socket_dir()
    sock = sock_dir / "dstack.sock"
    dcap = base / "dcap"
    with simulator_process(sock, "--dcap-dir", str(dcap), env={"OAUTH3_SIM_SEED": "evidences"}):
        ca_key, leaf_key = new_key(), new_key()
        ca = issue("oauth3 evidences test CA", ca_key, ca=True)
        leaf = issue(DOMAIN, leaf_key, (ca, ca_key))
        other_key = new_key()
        wrong_key = new_key()
        wrong = issue("other.test", wrong_key, (ca, ca_key))
        (base / "ca.pem").write_bytes(pem(ca))

        good = _evidence_dir(base / "good", pem(leaf, ca))
        wrong_files = _evidence_dir(base / "wrong-name", pem(wrong, ca))
        b_key, wildcard_key = new_key(), new_key()
        b_leaf = issue(DOMAIN, b_key, (ca, ca_key))
        replica_b_files = _evidence_dir(base / "replica-b", pem(b_leaf, ca))
        wildcard_leaf = issue(WILDCARD, wildcard_key, (ca, ca_key))
        stale = _evidence_dir_with(
            base / "stale-beside-wildcard",
            {CERT_FILE: pem(leaf, ca), f"cert-{WILDCARD}.pem": pem(wildcard_leaf, ca)},
        )

        async def quotes() -> list[bytes]:
            return [
                await _get_quote(sock, hashlib.sha256(data).digest())
                for data in (
                    good["sha256sum.txt"],
                    b"some other data",
                    wrong_files["sha256sum.txt"],
                    replica_b_files["sha256sum.txt"],
                    stale["sha256sum.txt"],
                )
            ]

        with ThreadPoolExecutor(1) as pool:
            quoted = pool.submit(asyncio.run, quotes()).result()
        good_quote, other_quote, wrong_quote, b_quote, stale_quote = quoted
        good["quote.json"] = good_quote
        wrong_files["quote.json"] = wrong_quote
        replica_b_files["quote.json"] = b_quote
        stale["quote.json"] = stale_quote
        yield World(
            root_ca=dcap / "root-ca.der",
            collateral=dcap / "collateral.json",
            ca_pem=base / "ca.pem",
            served=Identity(pem(leaf, ca), key_pem(leaf_key)),
            other_key=Identity(pem(issue(DOMAIN, other_key, (ca, ca_key)), ca), key_pem(other_key)),
            same_key=Identity(pem(issue(DOMAIN, leaf_key, (ca, ca_key)), ca), key_pem(leaf_key)),
            wrong_name=Identity(pem(wrong, ca), key_pem(wrong_key)),
            good=good,
            quote_over_other_data=other_quote,
            wrong_name_files=wrong_files,
            replica_b=Identity(pem(b_leaf, ca), key_pem(b_key)),
            replica_b_files=replica_b_files,
            wildcard=Identity(pem(wildcard_leaf, ca), key_pem(wildcard_key)),
            stale_beside_wildcard=stale,
        )
    shutil.rmtree(sock_dir, ignore_errors=True)


# ---------------------------------------------------------------- the HTTPS evidence server


@dataclass
class Served:
    """A running HTTPS evidence server: its port and what it saw."""

    port: int
    sni: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    @property
    def connect_to(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def https_evidences(
    files: dict[str, bytes], identity: Identity, tmp_path: Path
) -> AsyncIterator[Served]:
    """Serve `files` at https://127.0.0.1:PORT/evidences/<name> with `identity`'s certificate."""
    (tmp_path / "chain.pem").write_bytes(identity.chain)
    (tmp_path / "key.pem").write_bytes(identity.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    served = Served(port=0)

    def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        served.sni.append(name)

    context.sni_callback = remember_sni

    async def evidence(request: web.Request) -> web.Response:
        served.hosts.append(request.host)
        body = files.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/evidences/{name}", evidence)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        served.port = runner.addresses[0][1]
        yield served
    finally:
        await runner.cleanup()


def outcomes(doc: dict[str, Any]) -> dict[str, bool | None]:
    return {s["name"]: s["ok"] for s in doc["steps"]}


def online(world: World, served: Served, *extra: str) -> list[str]:
    return world.check_args(
        "--evidences", f"https://{DOMAIN}", "--connect-to", served.connect_to, *extra
    )


ALL_PASS = {
    "quote": True,
    "simulated": True,
    "hardware": True,
    "tcb_policy": True,
    "platform": True,
    "info_binding": None,
    "nonce": None,
    "event_log": True,
    "compose": True,
    "evidence_files": True,
    "evidence_binding": True,
    "tls_certificate": True,
}


def only_failing(name: str) -> dict[str, bool | None]:
    return {**ALL_PASS, name: False}


# ---------------------------------------------------------------- end to end


async def test_simulator_evidences_over_https_pass_every_step(world: World, tmp_path: Path) -> None:
    async with https_evidences(world.good, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served))
        text_code, text = await verify_text(online(world, served))
    assert code == 0, doc
    assert outcomes(doc) == ALL_PASS
    assert doc["verdict"] == "SIMULATED"
    assert step(doc, "hardware")["details"]["root"] == "pinned mock root (--root-ca)"
    digest = hashlib.sha256(world.good["sha256sum.txt"]).hexdigest()
    assert doc["report_data"] == digest + "00" * 32
    assert step(doc, "evidence_binding")["details"]["sha256sum_sha256"] == digest
    assert step(doc, "evidence_files")["details"]["listed"] == ["acme-account.json", CERT_FILE]
    tls = step(doc, "tls_certificate")["details"]
    assert tls["match"] == "leaf"
    assert tls["chain_verified"] is False
    assert any("did NOT verify the web-PKI" in note for note in doc["notes"])
    assert set(served.sni) == {DOMAIN}
    assert set(served.hosts) == {DOMAIN}
    assert text_code == 0
    assert "✓ tls_certificate" in text
    assert "! the fetch did NOT verify the web-PKI certificate chain" in text
    assert "simulated: not Intel hardware" in text
    assert text.splitlines()[-1].startswith("SIMULATED (exit 0)")


async def test_a_served_certificate_with_another_key_fails_tls(
    world: World, tmp_path: Path
) -> None:
    async with https_evidences(world.good, world.other_key, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 20, doc
    assert outcomes(doc) == only_failing("tls_certificate")
    assert "not the leaf of" in step(doc, "tls_certificate")["reason"]


async def test_a_reissued_certificate_with_the_same_key_matches_by_key(
    world: World, tmp_path: Path
) -> None:
    async with https_evidences(world.good, world.same_key, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 0, doc
    tls = step(doc, "tls_certificate")
    assert tls["details"]["match"] == "public_key"
    assert "has its public key" in tls["reason"]


async def test_a_file_that_no_longer_matches_sha256sum_fails_files(
    world: World, tmp_path: Path
) -> None:
    files = {**world.good, "acme-account.json": ACME.replace(b"valid", b"revoked")}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 18, doc
    assert outcomes(doc) == only_failing("evidence_files")
    assert step(doc, "evidence_files")["details"]["mismatched"][0].startswith("acme-account.json")


async def test_a_listed_file_the_server_does_not_have_fails_files(
    world: World, tmp_path: Path
) -> None:
    files = {k: v for k, v in world.good.items() if k != "acme-account.json"}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 18, doc
    assert "acme-account.json unreadable (HTTP 404)" in step(doc, "evidence_files")["reason"]


async def test_a_quote_over_other_data_fails_binding(world: World, tmp_path: Path) -> None:
    files = {**world.good, "quote.json": world.quote_over_other_data}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 19, doc
    assert outcomes(doc) == only_failing("evidence_binding")
    assert "does not bind these files" in step(doc, "evidence_binding")["reason"]


async def test_a_tappd_rawquote_quote_json_is_accepted(world: World, tmp_path: Path) -> None:
    answer = orjson.loads(world.good["quote.json"])
    tappd = {
        "quote": answer["quote"],
        "event_log": answer["event_log"],
        "hash_algorithm": "raw",
        "prefix": "",
    }
    files = {**world.good, "quote.json": orjson.dumps(tappd)}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 0, doc
    assert outcomes(doc) == ALL_PASS


async def test_quote_json_whose_report_data_field_lies_fails_binding(
    world: World, tmp_path: Path
) -> None:
    answer = orjson.loads(world.good["quote.json"])
    answer["report_data"] = hashlib.sha256(b"a claim").hexdigest() + "00" * 32
    files = {**world.good, "quote.json": orjson.dumps(answer)}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 19, doc
    assert "report_data differs" in step(doc, "evidence_binding")["reason"]


async def test_a_quoted_certificate_for_another_name_fails_tls(
    world: World, tmp_path: Path
) -> None:
    async with https_evidences(world.wrong_name_files, world.wrong_name, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 20, doc
    assert outcomes(doc) == only_failing("tls_certificate")
    assert "does not name evidence.test" in step(doc, "tls_certificate")["reason"]


async def test_tls_ca_verifies_the_fetch(world: World, tmp_path: Path) -> None:
    async with https_evidences(world.good, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served, "--tls-ca", str(world.ca_pem)))
    assert code == 0, doc
    assert step(doc, "tls_certificate")["details"]["chain_verified"] is True
    assert not any("did NOT verify" in note for note in doc["notes"])


async def test_tls_ca_refuses_a_chain_it_does_not_root(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(pem(issue("another CA", new_key(), ca=True)))
    async with https_evidences(world.good, world.served, tmp_path) as served:
        code, doc = await verify(online(world, served, "--tls-ca", str(stranger)))
    assert code == 2
    assert doc["verdict"] == "ERROR"
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "CERTIFICATE_VERIFY_FAILED" in err


async def test_missing_sha256sum_is_an_io_error(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {k: v for k, v in world.good.items() if k != "sha256sum.txt"}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, _ = await verify(online(world, served))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "sha256sum.txt: HTTP 404" in err


# ---------------------------------------------------------------- saved evidences


def _save(files: dict[str, bytes], directory: Path) -> Path:
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


async def test_saved_evidences_pass_but_leave_tls_unchecked(world: World, tmp_path: Path) -> None:
    saved = _save(world.good, tmp_path / "saved")
    code, doc = await verify(world.check_args("--evidences-dir", str(saved)))
    assert (code, doc["verdict"]) == (4, "PARTIAL"), doc
    assert outcomes(doc) == {**ALL_PASS, "tls_certificate": None}
    assert step(doc, "tls_certificate")["outcome"] == "skipped"
    assert doc["subject"].endswith(f"for {DOMAIN}")
    code, text = await verify_text(world.check_args("--evidences-dir", str(saved)))
    assert code == 4
    assert "gap: tls_certificate: NOT CHECKED: saved evidences, no TLS handshake" in text
    assert text.splitlines()[-1].startswith("PARTIAL (exit 4)")


async def test_saved_evidences_with_a_changed_certificate_fail_files(
    world: World, tmp_path: Path
) -> None:
    saved = _save({**world.good, CERT_FILE: world.other_key.chain}, tmp_path / "saved")
    code, doc = await verify(world.check_args("--evidences-dir", str(saved)))
    assert code == 18, doc
    assert step(doc, "evidence_binding")["ok"] is True


async def test_saved_evidences_with_two_certificates_need_domain(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = _save({**world.good, "cert-other.test.pem": world.wrong_name.chain}, tmp_path / "s")
    code, _ = await verify(world.check_args("--evidences-dir", str(saved)))
    assert code == 2
    assert "give --domain" in capsys.readouterr().err
    code, doc = await verify(world.check_args("--evidences-dir", str(saved), "--domain", DOMAIN))
    assert code == 4, doc


# ---------------------------------------------------------------- usage and formats


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--evidences", "http://evidence.test"], "an https:// URL"),
        (["--evidences", "https://evidence.test", "--connect-to", "nowhere"], "not HOST:PORT"),
        (["--evidences-dir", "/nonexistent-o3", "--domain", DOMAIN], "is not a directory"),
        (["--connect-to", "127.0.0.1:1", "--evidences-dir", "."], "apply to --evidences only"),
        (["--domain", DOMAIN, "--evidences", "https://x.test"], "applies to --evidences-dir"),
        (["--evidences", "https://x.test", "--evidences-dir", "."], "give exactly one of"),
    ],
)
def test_usage_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(args, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_sha256sum_reads_coreutils_text_and_binary_lines() -> None:
    digest = "ab" * 32
    parsed = parse_sha256sum(f"{digest}  acme-account.json\n{digest} *cert-a.test.pem\n".encode())
    assert parsed == [
        ("acme-account.json", bytes.fromhex(digest)),
        ("cert-a.test.pem", bytes.fromhex(digest)),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a checksum line\n",
        f"{'ab' * 32}  ../etc/passwd\n",
        f"{'ab' * 32}  sub/dir.pem\n",
        f"{'ab' * 32}  ..\n",
        f"{'ab' * 32}  a.pem\n{'cd' * 32}  a.pem\n",
        f"{'ab' * 31}  short.pem\n",
    ],
)
def test_sha256sum_refuses_malformed_or_escaping_lines(text: str) -> None:
    with pytest.raises(ChecksumFormatError):
        parse_sha256sum(text.encode())


def test_certificate_file_names_and_domain_matching() -> None:
    assert cert_file_for("a.example.com", ["cert-a.example.com.pem"]) == "cert-a.example.com.pem"
    assert cert_file_for("a.example.com", ["cert-*.example.com.pem"]) == "cert-*.example.com.pem"
    assert cert_file_for("a.example.com", ["cert.pem"]) == "cert.pem"
    assert cert_file_for("a.example.com", ["cert-b.example.com.pem"]) is None
    wildcard = issue("*.example.com", new_key())
    assert names_domain(wildcard, "a.example.com")
    assert not names_domain(wildcard, "a.b.example.com")
    assert not names_domain(wildcard, "example.com")


def test_evidence_urls_and_connect_to() -> None:
    assert str(evidences_base("https://d.test")) == "https://d.test/evidences/"
    assert str(evidences_base("https://d.test:8443/evidences")) == "https://d.test:8443/evidences/"
    assert parse_connect_to("[::1]:443") == ("::1", 443)
    with pytest.raises(EvidencesError):
        parse_connect_to("127.0.0.1:99999")


async def test_a_quote_json_that_is_no_quote_is_an_io_error(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {**world.good, "quote.json": b'{"error": "Failed to get quote"}'}
    async with https_evidences(files, world.served, tmp_path) as served:
        code, _ = await verify(online(world, served))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "quote.json from https://evidence.test/evidences/: " in err


# ---------------------------------------------------------------- replicas behind one address


@asynccontextmanager
async def https_replicas(
    replicas: list[tuple[dict[str, bytes], Identity]], tmp_path: Path, *, keep_alive: bool = True
) -> AsyncIterator[Served]:
    """One HTTPS address in front of several replicas, as a dstack gateway routes an app id: each
    new connection goes to the next replica, which serves its own files and certificate."""
    contexts = []
    for index, (_, identity) in enumerate(replicas):
        (tmp_path / f"chain{index}.pem").write_bytes(identity.chain)
        (tmp_path / f"key{index}.pem").write_bytes(identity.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / f"chain{index}.pem", tmp_path / f"key{index}.pem")
        contexts.append(context)
    served = Served(port=0)

    def route(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        served.sni.append(name)
        sock.context = contexts[(len(served.sni) - 1) % len(contexts)]

    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    front.load_cert_chain(tmp_path / "chain0.pem", tmp_path / "key0.pem")
    front.sni_callback = route

    async def evidence(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        files = replicas[contexts.index(ssl_object.context)][0]
        body = files.get(request.match_info["name"])
        response = web.Response(body=body) if body is not None else web.Response(status=404)
        if not keep_alive:
            response.force_close()
        return response

    app = web.Application()
    app.router.add_get("/evidences/{name}", evidence)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=front).start()
        served.port = runner.addresses[0][1]
        yield served
    finally:
        await runner.cleanup()


async def test_replicas_behind_one_address_verify_on_one_connection(
    world: World, tmp_path: Path
) -> None:
    replicas = [(world.good, world.served), (world.replica_b_files, world.replica_b)]
    async with https_replicas(replicas, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 0, doc
    assert outcomes(doc) == ALL_PASS
    assert step(doc, "tls_certificate")["details"]["connections"] == 1
    assert len(served.sni) == 1
    assert doc["instance_id"] is not None


async def test_replicas_that_close_every_connection_are_an_error_never_a_mixed_verdict(
    world: World, tmp_path: Path
) -> None:
    replicas = [(world.good, world.served), (world.replica_b_files, world.replica_b)]
    async with https_replicas(replicas, tmp_path, keep_alive=False) as served:
        code, doc = await verify(online(world, served))
    assert (code, doc["verdict"]) == (2, "ERROR")
    assert "different certificates" in doc["error"]


async def test_one_replica_closing_connections_still_verifies(world: World, tmp_path: Path) -> None:
    async with https_replicas([(world.good, world.served)], tmp_path, keep_alive=False) as served:
        code, doc = await verify(online(world, served))
    assert code == 0, doc
    assert step(doc, "tls_certificate")["details"]["connections"] > 1


async def test_a_stale_exact_certificate_beside_the_served_wildcard_is_no_refusal(
    world: World, tmp_path: Path
) -> None:
    async with https_evidences(world.stale_beside_wildcard, world.wildcard, tmp_path) as served:
        code, doc = await verify(online(world, served))
    assert code == 0, doc
    details = step(doc, "tls_certificate")["details"]
    assert (details["certificate_file"], details["match"]) == (f"cert-{WILDCARD}.pem", "leaf")


async def test_the_report_names_the_instance_id(world: World, tmp_path: Path) -> None:
    async with https_evidences(world.good, world.served, tmp_path) as served:
        _, text = await verify_text(online(world, served))
        _, doc = await verify(online(world, served))
    assert len(doc["instance_id"]) == 40
    assert f"instance_id   {doc['instance_id']}" in text


# ---------------------------------------------------------------- hostile saved directories


def _saved_with(world: World, directory: Path, name: str, make: Callable[[Path], None]) -> Path:
    saved = _save({k: v for k, v in world.good.items() if k != name}, directory)
    make(saved / name)
    return saved


@pytest.mark.parametrize("name", ["sha256sum.txt", "quote.json"])
async def test_a_saved_required_file_that_is_a_fifo_is_refused_without_hanging(
    world: World, tmp_path: Path, name: str
) -> None:
    saved = _saved_with(world, tmp_path / "saved", name, os.mkfifo)
    code, doc = await asyncio.wait_for(verify(world.check_args("--evidences-dir", str(saved))), 30)
    assert (code, doc["verdict"]) == (2, "ERROR")
    assert "not a regular file" in doc["error"]


async def test_a_saved_listed_file_that_is_a_fifo_fails_files_without_hanging(
    world: World, tmp_path: Path
) -> None:
    saved = _saved_with(world, tmp_path / "saved", "acme-account.json", os.mkfifo)
    code, doc = await asyncio.wait_for(verify(world.check_args("--evidences-dir", str(saved))), 30)
    assert code == 18, doc
    assert "not a regular file" in step(doc, "evidence_files")["reason"]


async def test_a_saved_file_that_is_a_symlink_is_not_followed(world: World, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.pem"
    target.write_bytes(world.good[CERT_FILE])
    saved = _saved_with(world, tmp_path / "saved", CERT_FILE, lambda p: p.symlink_to(target))
    code, doc = await verify(world.check_args("--evidences-dir", str(saved), "--domain", DOMAIN))
    assert code == 18, doc
    assert "symbolic link" in step(doc, "evidence_files")["reason"]


async def test_a_huge_saved_file_is_read_no_further_than_the_cap(
    world: World, tmp_path: Path
) -> None:
    def huge(path: Path) -> None:
        with path.open("wb") as handle:
            handle.truncate(1 << 40)  # sparse: a terabyte that takes no disk

    saved = _saved_with(world, tmp_path / "saved", "acme-account.json", huge)
    code, doc = await verify(world.check_args("--evidences-dir", str(saved)))
    assert code == 18, doc
    assert "exceeds" in step(doc, "evidence_files")["reason"]
    saved = _saved_with(world, tmp_path / "saved2", "quote.json", huge)
    code, doc = await verify(world.check_args("--evidences-dir", str(saved)))
    assert (code, doc["verdict"]) == (2, "ERROR")


# ---------------------------------------------------------------- crafted certificates


def _served(listed: dict[str, bytes], served_der: bytes) -> EvidenceSet:
    return EvidenceSet(
        source="crafted",
        domain=DOMAIN,
        files={**listed, "sha256sum.txt": _sums(listed)},
        unreadable={},
        served_leaf=served_der,
    )


def _sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()).encode()


def check_tls(evidences: EvidenceSet) -> StepResult:
    """The tls_certificate step as the verifier runs it (guarded: any exception fails it)."""
    return evidence_steps(evidences, None, None)[2]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_crafted_wildcards_cover_one_label_only() -> None:
    key = new_key()
    for pattern, covers in (("*.test", True), ("*.evidence.test", False), ("e*.test", False)):
        cert = issue(pattern, key)
        result = check_tls(_served({f"cert-{pattern}.pem": pem(cert)}, _der(cert)))
        assert (result.ok is True) is covers, (pattern, result.reason)
    deep = issue("*.test", key)
    assert not names_domain(deep, "a.evidence.test")
    assert names_domain(issue("EVIDENCE.TEST.", key), DOMAIN)


def test_a_reissued_leaf_naming_another_domain_is_refused_though_its_key_matches() -> None:
    key = new_key()
    quoted, served = issue(DOMAIN, key), issue("other.test", key)
    result = check_tls(_served({CERT_FILE: pem(quoted)}, _der(served)))
    assert result.ok is False
    assert "does not name" in result.reason


def test_a_served_chain_is_judged_by_its_leaf_and_a_quoted_chain_by_its_first() -> None:
    ca_key, key = new_key(), new_key()
    ca = issue("crafted CA", ca_key, ca=True)
    leaf = issue(DOMAIN, key, (ca, ca_key))
    assert check_tls(_served({CERT_FILE: pem(leaf, ca)}, _der(leaf))).ok is True
    reversed_chain = check_tls(_served({CERT_FILE: pem(ca, leaf)}, _der(leaf)))
    assert reversed_chain.ok is False


@pytest.mark.parametrize(
    ("listed", "served"),
    [
        ({CERT_FILE: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, None),
        ({CERT_FILE: b"no pem at all"}, None),
        ({}, b"\x30\x03\x02\x01\x00"),
    ],
)
def test_malformed_certificates_fail_the_step_never_the_program(
    listed: dict[str, bytes], served: bytes | None
) -> None:
    leaf = issue(DOMAIN, new_key())
    listed = listed or {CERT_FILE: pem(leaf)}
    result = check_tls(_served(listed, served if served is not None else _der(leaf)))
    assert result.ok is False
