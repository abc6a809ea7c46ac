"""Issue 22's classes against oauth3-verify and oauth3-inspect, one regression test each: answers
from a hostile network (PCCS, service, redirects, unencodable hosts), pathological structure,
consistent exit codes. Each failed on the code before the fix (a traceback, exit 1, an empty
--json, or another exit code for the same input)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.attestation import dump_event_log, parse_event_log, runtime_event_digest
from oauth3.verifier.policy import PlatformPin, Policy, parse_policy, render_policy
from tests.pccs_fake import COLLATERAL, REPORT, collateral_pieces, fake_pccs
from tests.verifycli import verify

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
INSPECT = [sys.executable, "-m", "oauth3.verifier.inspect_cli"]
VERIFY = [sys.executable, "-m", "oauth3.verifier.cli"]


def _one_error_line(process: subprocess.CompletedProcess[bytes]) -> str:
    err = process.stderr.decode()
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


def _pccs_with(collateral: dict[str, str], path: str, answer_with: Any) -> web.Application:
    """The fake PCCS, with the answer at `path` replaced by `answer_with`'s."""
    app, _ = fake_pccs(collateral)

    @web.middleware
    async def replace_answer(request: web.Request, handler: Any) -> web.StreamResponse:
        answer: web.StreamResponse = await (answer_with if request.path == path else handler)(
            request
        )
        return answer

    app.middlewares.append(replace_answer)
    return app


async def _garbage_pem_crl(_: web.Request) -> web.Response:
    return web.Response(text="-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")


async def _hex_of_no_crl(_: web.Request) -> web.Response:
    return web.Response(text="3003020101")


@pytest.mark.parametrize(
    ("path", "handler"),
    [
        ("/sgx/certification/v4/rootcacrl", _garbage_pem_crl),
        ("/sgx/certification/v4/rootcacrl", _hex_of_no_crl),
    ],
)
async def test_a_pccs_crl_in_the_wrong_encoding_is_one_error_line(
    vectors: Path,
    aiohttp_server: ServerFactory,
    capsys: pytest.CaptureFixture[str],
    path: str,
    handler: Any,
) -> None:
    server = await aiohttp_server(_pccs_with(collateral_pieces(vectors), path, handler))
    args = ["--dstack-quote", str(vectors / REPORT), "--pccs", str(server.make_url("/"))]
    code, doc = await verify(args)
    assert (code, doc["verdict"]) == (2, "ERROR")
    assert "CRL" in doc["error"]
    assert capsys.readouterr().err.count("\n") == 1


async def test_a_pccs_issuer_chain_that_is_no_pem_is_one_error_line(
    vectors: Path, aiohttp_server: ServerFactory
) -> None:
    async def bad_chain(_: web.Request) -> web.Response:
        header = urllib.parse.quote("-----BEGIN CERTIFICATE-----\n\x1b[2J\n", safe="")
        return web.Response(body=b"\x30\x00", headers={"SGX-PCK-CRL-Issuer-Chain": header})

    app = _pccs_with(collateral_pieces(vectors), "/sgx/certification/v4/pckcrl", bad_chain)
    server = await aiohttp_server(app)
    args = ["--dstack-quote", str(vectors / REPORT), "--pccs", str(server.make_url("/"))]
    code, doc = await verify(args)
    assert (code, doc["verdict"]) == (2, "ERROR")


async def test_a_redirect_to_another_origin_is_refused_and_named(
    aiohttp_server: ServerFactory,
) -> None:
    elsewhere = await aiohttp_server(web.Application())

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(elsewhere.make_url(request.path)))

    app = web.Application()
    app.router.add_get("/{tail:.*}", away)
    server = await aiohttp_server(app)
    code, doc = await verify([str(server.make_url("/")), "--skip-dcap"])
    assert (code, doc["verdict"]) == (2, "ERROR")
    assert "another origin" in doc["error"]
    assert str(elsewhere.make_url("/info")) in doc["error"]


async def test_a_redirect_loop_within_the_origin_ends(aiohttp_server: ServerFactory) -> None:
    async def again(request: web.Request) -> web.Response:
        raise web.HTTPFound("/info")

    app = web.Application()
    app.router.add_get("/info", again)
    server = await aiohttp_server(app)
    code, doc = await verify([str(server.make_url("/")), "--skip-dcap"])
    assert (code, doc["verdict"]) == (2, "ERROR")
    assert "redirects" in doc["error"]


@pytest.mark.parametrize(
    "location", ["http://exa mple.com/info", "http://a..b/info", "http://[::1/info"]
)
async def test_a_redirect_whose_host_cannot_be_encoded_is_one_error_line(
    aiohttp_server: ServerFactory, location: str
) -> None:
    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    app = web.Application()
    app.router.add_get("/info", broken)
    server = await aiohttp_server(app)
    code, doc = await verify([str(server.make_url("/")), "--skip-dcap"])
    assert (code, doc["verdict"]) == (2, "ERROR")


@pytest.mark.parametrize(
    "url", [b"http://\xff/", b"http://exa mple.com/", b"https://xn--a.com/", b"http://a:0/"]
)
def test_a_url_whose_host_cannot_be_encoded_is_one_error_line(url: bytes) -> None:
    process = subprocess.run(
        [*VERIFY, "--skip-dcap", "--json", "--", url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 2
    _one_error_line(process)
    assert json.loads(process.stdout)["verdict"] == "ERROR"


@pytest.mark.parametrize("extra", [[], ["--allow-simulated"], ["--skip-dcap"]])
def test_an_unparseable_quote_fails_the_quote_step_whatever_the_options(
    tmp_path: Path, extra: list[str]
) -> None:
    quote = tmp_path / "quote.hex"
    quote.write_text("0400deadbeef")
    process = subprocess.run(
        [*VERIFY, "--dstack-quote", str(quote), "--json", *extra],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 10, process.stderr
    assert json.loads(process.stdout)["verdict"] == "FAILED"


def _with_key_provider_payload(vectors: Path, payload: bytes, tmp_path: Path) -> Path:
    document = json.loads((vectors / REPORT).read_text())
    events = parse_event_log(document["event_log"])
    changed = [
        replace(
            e,
            event_payload=payload,
            digest=runtime_event_digest(e.event, payload, e.version) if e.digest else b"",
        )
        if e.event == "key-provider"
        else e
        for e in events
    ]
    log = tmp_path / "events.json"
    log.write_text(dump_event_log(changed))
    return log


def test_inspect_survives_deeply_nested_json_in_an_event_payload(
    vectors: Path, tmp_path: Path
) -> None:
    log = _with_key_provider_payload(vectors, b"[" * 50_000 + b"]" * 50_000, tmp_path)
    process = subprocess.run(
        [*INSPECT, str(vectors / REPORT), "--event-log", str(log)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert "key-provider" in json.loads(process.stdout)["event_log"]["rtmr3_error"]


def test_inspect_names_a_file_with_terminal_escapes_escaped(tmp_path: Path) -> None:
    name = tmp_path / "q\x1b[2J.hex"
    process = subprocess.run([*INSPECT, str(name)], capture_output=True, timeout=60, check=False)
    assert process.returncode == 2
    assert b"\x1b" not in process.stderr
    assert "\\x1b[2J" in _one_error_line(process)


@pytest.mark.parametrize(
    "document",
    [
        b'{"quote": "04", "quote": "05"}',
        b'{"quote": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"quote": "0400", "event_log": 7}',
    ],
)
def test_inspect_refuses_ambiguous_or_pathological_documents_in_one_line(
    tmp_path: Path, document: bytes
) -> None:
    path = tmp_path / "quote.json"
    path.write_bytes(document)
    process = subprocess.run([*INSPECT, str(path)], capture_output=True, timeout=60, check=False)
    assert process.returncode == 2
    _one_error_line(process)


# st.text() never yields unpaired surrogates, which a path from a non-UTF-8 file system does
ANY_TEXT = st.lists(st.characters() | st.sampled_from(["\ud800", "\udcff", "\x1b", "\n"])).map(
    "".join
)
PLATFORM = {k: bytes(48) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")}


@settings(max_examples=200, deadline=None, database=None)
@given(
    observed=ANY_TEXT, name=ANY_TEXT, advisories=st.frozensets(ANY_TEXT.filter(bool), max_size=3)
)
def test_written_policies_read_back_as_written_whatever_the_observed_text(
    observed: str, name: str, advisories: frozenset[str]
) -> None:
    policy = Policy(
        compose_hashes=frozenset([bytes(32)]),
        platforms=(PlatformPin(name=name, values=PLATFORM),),
        allowed_advisories=advisories,
        source="p",
    )
    text = render_policy(policy, observed)
    assert all(c == "\n" or c.isprintable() or c == "\t" for c in text if ord(c) < 0x80)
    assert parse_policy(text, "p") == _printable_names(policy)


def _printable_names(policy: Policy) -> Policy:
    """What a written policy holds: strings with unpaired surrogates as their visible escape."""

    def shown(text: str) -> str:
        return text.encode("utf-8", "backslashreplace").decode()

    return replace(
        policy,
        platforms=tuple(replace(p, name=shown(p.name)) for p in policy.platforms),
        allowed_advisories=frozenset(shown(s) for s in policy.allowed_advisories),
    )


@pytest.mark.parametrize(
    "observed",
    ["bundle \udcff.json", 'x"\n[app]\ncompose_hashes = []\n#', "\\u0000", "\u2028\u202e"],
)
def test_a_written_policy_cannot_be_broken_or_injected(observed: str) -> None:
    policy = Policy(compose_hashes=frozenset([bytes(32)]), platforms=(), source="p")
    text = render_policy(policy, observed)
    assert parse_policy(text, "p").compose_hashes == {bytes(32)}
    assert text.splitlines().count("[app]") == 1


def test_a_platform_name_with_an_unpaired_surrogate_reads_back_visible() -> None:
    """Found by the property above: TOML has no escape for a lone surrogate."""
    policy = Policy(platforms=(PlatformPin(name="a\udcff", values=PLATFORM),), source="p")
    assert parse_policy(render_policy(policy, ""), "p").platforms[0].name == "a\\udcff"


def test_a_policy_nested_deeper_than_the_toml_parser_recurses_is_one_error_line(
    vectors: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    process = subprocess.run(
        [*VERIFY, "--dstack-quote", str(vectors / REPORT), "--policy", str(policy), "--json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 2
    assert "nest too deeply" in _one_error_line(process)


def test_json_output_escapes_del_found_by_the_fuzz_harness(vectors: Path, tmp_path: Path) -> None:
    """JSON leaves U+007F raw; --json output must not carry it (a policy name reaches it)."""
    registers = "".join(f'{k} = "{"cd" * 48}"\n' for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2"))
    policy = tmp_path / "policy.toml"
    policy.write_text(f'format = 1\n[[platform]]\nname = "x\\u007fy"\n{registers}')
    collateral = vectors / COLLATERAL
    args = ["--dstack-quote", str(vectors / REPORT), "--collateral", str(collateral)]
    process = subprocess.run(
        [*VERIFY, *args, "--at", "2026-03-20T10:41:14Z", "--policy", str(policy), "--json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 21, process.stderr
    assert b"\x7f" not in process.stdout
    assert "x\x7fy" in json.dumps(json.loads(process.stdout), ensure_ascii=False)
