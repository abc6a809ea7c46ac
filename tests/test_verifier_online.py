"""Online `oauth3-verify URL` against an in-test oauth3-shaped service signing simulator quotes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from oauth3.attestation import (
    RUNTIME_EVENT_TYPE,
    Event,
    dump_event_log,
    info_digest,
    mr_config_id_v1,
    parse_nonce,
    replay_rtmrs,
    report_data_for,
)
from oauth3.simulator.mockdcap import (
    TCB_EVALUATION_DATA_NUMBER,
    MockDcap,
    MockDcapOptions,
)
from oauth3.simulator.pccs import create_pccs_app
from oauth3.simulator.quote import QuoteSigner, build_quote, td_report_body
from tests.verifycli import pins_for, step, verify, verify_text

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
INFO = orjson.dumps(
    {"build_info": None, "name": "oauth3", "version": "0.1.0"}, option=orjson.OPT_SORT_KEYS
)
APP_COMPOSE = b'{"manifest_version":2,"name":"oauth3","runner":"docker-compose"}'
COMPOSE_HASH = hashlib.sha256(APP_COMPOSE).digest()
BOOT_EVENT_TYPE = 0x80000001


def runtime(name: str, payload: bytes) -> Event:
    return Event(3, RUNTIME_EVENT_TYPE, b"", name, payload)


def event_log(compose_hash: bytes = COMPOSE_HASH) -> list[Event]:
    boot = [
        Event(imr, BOOT_EVENT_TYPE, hashlib.sha384(f"boot {imr}.{n}".encode()).digest(), "", b"")
        for imr in (0, 1, 2)
        for n in range(2)
    ]
    return [
        *boot,
        runtime("system-preparing", b""),
        runtime("app-id", compose_hash[:20]),
        runtime("compose-hash", compose_hash),
        runtime("instance-id", bytes(range(20))),
        runtime("boot-mr-done", b""),
        runtime("key-provider", b'{"name":"none","id":""}'),
        runtime("system-ready", b""),
    ]


@dataclass
class FakeService:
    """An oauth3-shaped service: /info bytes and /attestation quotes from a mock DCAP signer."""

    dcap: MockDcap
    events: list[Event] = field(default_factory=event_log)
    mr_config_compose: bytes | None = COMPOSE_HASH
    served: list[dict[str, Any]] = field(default_factory=list)
    signer: QuoteSigner | None = None  # who signs its quotes (default: the mock DCAP's QE)

    def attestation(self, nonce: bytes | None) -> dict[str, Any]:
        report_data = report_data_for(info_digest(INFO), nonce)
        mr_config_id = (
            mr_config_id_v1(self.mr_config_compose) if self.mr_config_compose else bytes(48)
        )
        body = td_report_body(
            mr_td=hashlib.sha384(b"mr_td").digest(),
            rtmrs=replay_rtmrs(self.events),
            mr_config_id=mr_config_id,
            report_data=report_data,
        )
        return {
            "quote": base64.b64encode(build_quote(body, self.signer or self.dcap.signer)).decode(),
            "eventLog": dump_event_log(self.events),
            "reportData": report_data.hex(),
            "nonce": nonce.hex() if nonce is not None else None,
            "vmConfig": "{}",
            "generatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "layout": "oauth3/v1",
        }

    def app(self) -> web.Application:
        async def info(request: web.Request) -> web.Response:
            return web.Response(body=INFO, content_type="application/json")

        async def attest(request: web.Request) -> web.Response:
            text = request.query.get("nonce")
            try:
                nonce = parse_nonce(text) if text is not None else None
            except ValueError as exc:
                problem = {"type": "about:blank", "title": "Bad nonce", "status": 400}
                problem["detail"] = str(exc)
                return web.json_response(
                    problem, status=400, content_type="application/problem+json"
                )
            doc = self.attestation(nonce)
            self.served.append(doc)
            return web.json_response(doc)

        app = web.Application()
        app.router.add_get("/info", info)
        app.router.add_get("/attestation", attest)
        return app


@dataclass
class Stack:
    """A running fake service and the files a simulated check needs."""

    url: str
    service: FakeService
    root_ca: Path
    collateral: Path

    def pins(self) -> list[str]:
        """Flags pinning this fake CVM's app and platform."""
        quote = base64.b64decode(self.service.attestation(None)["quote"])
        return pins_for(quote, COMPOSE_HASH.hex())

    def simulated_args(self, *extra: str, pinned: bool = True) -> list[str]:
        return [
            self.url,
            "--allow-simulated",
            "--root-ca",
            str(self.root_ca),
            "--collateral",
            str(self.collateral),
            *(self.pins() if pinned else []),
            *extra,
        ]


def mock_dcap(options: MockDcapOptions | None = None) -> MockDcap:
    return MockDcap("oauth3 verifier tests", datetime.now(UTC), options)


async def start_stack(aiohttp_server: ServerFactory, tmp_path: Path, service: FakeService) -> Stack:
    server = await aiohttp_server(service.app())
    service.dcap.write_files(tmp_path)
    return Stack(
        url=str(server.make_url("")),
        service=service,
        root_ca=tmp_path / "root-ca.der",
        collateral=tmp_path / "collateral.json",
    )


@pytest.fixture
async def stack(aiohttp_server: ServerFactory, tmp_path: Path) -> Stack:
    return await start_stack(aiohttp_server, tmp_path, FakeService(mock_dcap()))


async def test_allowed_simulated_quote_is_simulated(stack: Stack) -> None:
    code, doc = await verify(stack.simulated_args())
    assert code == 0, doc
    assert doc["verdict"] == "SIMULATED"
    assert all(s["ok"] is True for s in doc["steps"])
    assert step(doc, "hardware")["details"]["root"] == "pinned mock root (--root-ca)"
    assert doc["compose_hash"] == COMPOSE_HASH.hex()
    sent = stack.service.served[-1]["nonce"]
    assert sent is not None
    assert doc["report_data"] == info_digest(INFO).hex() + sent
    code, text = await verify_text(stack.simulated_args())
    assert code == 0
    assert "simulated: not Intel hardware" in text
    assert text.splitlines()[-1].startswith("SIMULATED (exit 0)")
    assert "VERIFIED" not in text


async def test_simulated_quote_fails_without_allow(stack: Stack) -> None:
    code, doc = await verify([stack.url, "--collateral", str(stack.collateral)])
    assert code == 17
    assert doc["verdict"] == "FAILED"
    assert step(doc, "simulated")["ok"] is False
    assert step(doc, "simulated")["details"]["names_simulator"] is True
    # checked against Intel's root, the simulator's chain fails the hardware step as well
    assert step(doc, "hardware")["ok"] is False


async def test_allow_simulated_without_root_ca_still_fails_hardware(stack: Stack) -> None:
    code, doc = await verify(
        [stack.url, "--allow-simulated", "--collateral", str(stack.collateral)]
    )
    assert code == 11
    assert step(doc, "hardware")["details"]["root"] == "Intel SGX Root CA"


async def test_a_root_appended_to_the_chain_is_never_what_gets_pinned(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The PCK chain inside a quote is not signed: the host appends its own self-signed root.
    Verified with --root-ca, the verdict and --write-policy must name the root that vouched,
    or the next run would accept whatever that host signs with its own PKI."""
    honest, attacker = mock_dcap(), MockDcap("the host's own PKI", datetime.now(UTC))
    signer = honest.signer
    appended = replace(signer, pck_chain_pem=signer.pck_chain_pem + attacker.root_ca_pem.encode())
    first = await start_stack(aiohttp_server, tmp_path, FakeService(honest, signer=appended))
    written = tmp_path / "policy.toml"
    code, doc = await verify(first.simulated_args("--write-policy", str(written)))
    assert (code, doc["verdict"]) == (0, "SIMULATED"), doc
    assert doc["root_ca_sha256"] == hashlib.sha256(honest.root_ca_der).hexdigest()
    text = written.read_text()
    assert hashlib.sha256(honest.root_ca_der).hexdigest() in text
    assert hashlib.sha256(attacker.root_ca_der).hexdigest() not in text

    forged = await start_stack(aiohttp_server, tmp_path / "forged", FakeService(attacker))
    args = [forged.url, "--allow-simulated", "--policy", str(written)]
    code, doc = await verify([*args, "--collateral", str(forged.collateral)])
    assert (code, doc["verdict"]) == (11, "FAILED"), doc
    assert step(doc, "hardware")["details"]["root"] == "Intel SGX Root CA"


async def test_compose_expectations(stack: Stack) -> None:
    code, doc = await verify(stack.simulated_args(pinned=False))
    assert code == 3
    assert step(doc, "compose")["outcome"] == "unpinned"
    code, doc = await verify(stack.simulated_args())
    assert code == 0
    assert step(doc, "compose")["ok"] is True
    wrong = ["--expect-compose-hash", "11" * 32]
    code, doc = await verify([*stack.simulated_args(pinned=False), *wrong])
    assert code == 16
    assert "not one you pinned" in step(doc, "compose")["reason"]


async def test_mr_config_id_must_match_the_event_log(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    service = FakeService(mock_dcap(), mr_config_compose=hashlib.sha256(b"other").digest())
    stack = await start_stack(aiohttp_server, tmp_path, service)
    code, doc = await verify(stack.simulated_args())
    assert code == 16
    assert "mr_config_id" in step(doc, "compose")["reason"]


async def test_tampered_info_fails_binding(stack: Stack, aiohttp_server: ServerFactory) -> None:
    async def proxy(request: web.Request) -> web.Response:
        async with ClientSession() as session, session.get(stack.url + request.path_qs) as up:
            body = await up.read()
        if request.path == "/info":
            body = body.replace(b'"0.1.0"', b'"0.1.1"')
        return web.Response(body=body, status=up.status, content_type=up.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", proxy)
    tampering = await aiohttp_server(app)
    args = stack.simulated_args()
    args[0] = str(tampering.make_url(""))
    code, doc = await verify(args)
    assert code == 13
    assert "sha256(/info)" in step(doc, "info_binding")["reason"]
    assert step(doc, "hardware")["ok"] is True


async def test_replayed_response_fails_nonce(stack: Stack, aiohttp_server: ServerFactory) -> None:
    old = stack.service.attestation(bytes([7]) * 32)

    async def info(request: web.Request) -> web.Response:
        return web.Response(body=INFO, content_type="application/json")

    async def replay(request: web.Request) -> web.Response:
        return web.json_response(old)

    app = web.Application()
    app.router.add_get("/info", info)
    app.router.add_get("/attestation", replay)
    replaying = await aiohttp_server(app)
    args = stack.simulated_args()
    args[0] = str(replaying.make_url(""))
    code, doc = await verify(args)
    assert code == 14
    assert "replayed" in step(doc, "nonce")["reason"]
    assert step(doc, "info_binding")["ok"] is True


async def test_no_nonce_expects_zeros_and_is_not_fresh(stack: Stack) -> None:
    code, doc = await verify(stack.simulated_args("--nonce", "none"))
    assert (code, doc["verdict"]) == (5, "NOT_FRESH")
    assert step(doc, "nonce")["outcome"] == "not_fresh"
    assert doc["report_data"].endswith("00" * 32)
    assert "nonce=" not in str(stack.service.served)
    given = "ab" * 32
    code, doc = await verify(stack.simulated_args("--nonce", given))
    assert code == 0
    assert doc["report_data"].endswith(given)


async def test_saved_bundle_repeats_the_check_offline_but_not_freshness(
    stack: Stack, tmp_path: Path
) -> None:
    saved = tmp_path / "evidence.json"
    online = await verify(stack.simulated_args("--save-bundle", str(saved)))
    bundle = json.loads(saved.read_bytes())
    assert base64.b64decode(bundle["info"]) == INFO
    assert bundle["attestation"] == stack.service.served[-1]
    assert bundle["nonce"] == stack.service.served[-1]["nonce"]
    assert bundle["collateral"] is not None
    assert bundle["collateralIdentity"] == online[1]["collateral"]
    offline_args = [
        "--bundle",
        str(saved),
        "--allow-simulated",
        "--root-ca",
        str(stack.root_ca),
        *stack.pins(),
    ]
    offline = await verify(offline_args)
    assert online[0] == 0
    assert (offline[0], offline[1]["verdict"]) == (5, "NOT_FRESH")
    # the same outcomes and details, but the check time (hardware) and the nonce's freshness
    changed = [
        (a["name"], a["outcome"], b["outcome"])
        for a, b in zip(online[1]["steps"], offline[1]["steps"], strict=True)
        if a["outcome"] != b["outcome"]
        or (a["details"] != b["details"] and a["name"] != "hardware")
    ]
    assert changed == [("nonce", "pass", "not_fresh")]
    assert "recorded in the bundle" in step(offline[1], "nonce")["reason"]
    assert offline[1]["collateral"] == online[1]["collateral"]
    assert offline[1]["evidence"]["fetched_at"] == bundle["fetchedAt"]
    assert sorted(os.listdir(tmp_path)) == ["collateral.json", "evidence.json", "root-ca.der"]

    bundle["info"] = base64.b64encode(INFO.replace(b"oauth3", b"oauth4")).decode()
    saved.write_text(json.dumps(bundle))
    code, doc = await verify(offline_args)
    assert code == 13
    assert step(doc, "info_binding")["ok"] is False


async def test_bundle_pins_collateral_and_time(stack: Stack, tmp_path: Path) -> None:
    saved = tmp_path / "b.json"
    await verify(stack.simulated_args("--save-bundle", str(saved)))
    args = ["--bundle", str(saved), "--allow-simulated", "--root-ca", str(stack.root_ca)]
    code, doc = await verify([*args, "--at", "2100-01-01T00:00:00Z"])
    assert code == 11
    assert "2100-01-01T00:00:00Z" in step(doc, "hardware")["reason"]


async def test_collateral_from_mock_pccs(stack: Stack, aiohttp_server: ServerFactory) -> None:
    pccs = await aiohttp_server(create_pccs_app(stack.service.dcap))
    args = [stack.url, "--allow-simulated", "--root-ca", str(stack.root_ca), *stack.pins()]
    code, doc = await verify([*args, "--pccs", str(pccs.make_url(""))])
    assert code == 0, [(s["name"], s["reason"]) for s in doc["steps"] if s["ok"] is False]
    assert step(doc, "hardware")["details"]["status"] == "UpToDate"


@pytest.mark.parametrize(
    ("status", "advisories"), [("OutOfDate", ("INTEL-SA-00837",)), ("SWHardeningNeeded", ())]
)
async def test_tcb_policy_widened_explicitly(
    aiohttp_server: ServerFactory, tmp_path: Path, status: Any, advisories: tuple[str, ...]
) -> None:
    options = MockDcapOptions(tcb_status=status, advisory_ids=advisories)
    stack = await start_stack(aiohttp_server, tmp_path, FakeService(mock_dcap(options)))
    code, doc = await verify(stack.simulated_args())
    assert code == 12
    assert step(doc, "hardware")["ok"] is True
    assert doc["tcb_status"] == status
    code, doc = await verify(stack.simulated_args("--allow-tcb", status))
    assert doc["advisory_ids"] == list(advisories)
    if advisories:
        # the status alone is not enough: every advisory must be accepted too
        assert code == 12
        assert "advisories INTEL-SA-00837 are not accepted" in step(doc, "tcb_policy")["reason"]
        accept = [f"--allow-advisory={a}" for a in advisories]
        code, doc = await verify(stack.simulated_args("--allow-tcb", status, *accept))
    assert code == 0


async def test_the_minimum_tcb_evaluation_covers_the_qe_identity_too(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """TCB info from the current round, QE identity (still within its nextUpdate) from an older
    one: a minimum evaluation number refuses the collateral as a whole."""
    options = MockDcapOptions(qe_identity_evaluation=TCB_EVALUATION_DATA_NUMBER - 1)
    stack = await start_stack(aiohttp_server, tmp_path, FakeService(mock_dcap(options)))
    current = str(TCB_EVALUATION_DATA_NUMBER)
    code, doc = await verify(stack.simulated_args("--min-tcb-evaluation", current))
    assert code == 12, doc
    assert step(doc, "hardware")["ok"] is True
    reason = step(doc, "tcb_policy")["reason"]
    assert f"QE identity comes from TCB evaluation {TCB_EVALUATION_DATA_NUMBER - 1}" in reason
    lower = str(TCB_EVALUATION_DATA_NUMBER - 1)
    code, doc = await verify(stack.simulated_args("--min-tcb-evaluation", lower))
    assert code == 0, doc


async def test_skip_dcap_with_simulator_is_partial_never_zero(stack: Stack) -> None:
    code, text = await verify_text([stack.url, "--allow-simulated", "--skip-dcap", *stack.pins()])
    assert code == 4
    assert text.splitlines()[-1].startswith("PARTIAL (exit 4)")
    assert "simulated: not Intel hardware" in text


async def test_service_errors_exit_2(
    stack: Stack, aiohttp_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        problem = {"type": "about:blank", "title": "Agent unavailable", "status": 503}
        return web.json_response(problem, status=503, content_type="application/problem+json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", unavailable)
    down = await aiohttp_server(app)
    code, doc = await verify([str(down.make_url("")), "--skip-dcap"])
    assert code == 2
    assert doc == {
        "verdict": "ERROR",
        "exit_code": 2,
        "error": f"GET {down.make_url('/info')}: HTTP 503: Agent unavailable",
    }
    err = capsys.readouterr().err
    assert "HTTP 503: Agent unavailable" in err
    assert err.count("\n") == 1


async def test_real_process_against_the_service(stack: Stack) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauth3.verifier.cli",
        *stack.simulated_args(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    assert "SIMULATED" in stdout.decode()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauth3.verifier.cli",
        stack.url,
        "--collateral",
        str(stack.collateral),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 17
    assert "FAILED at simulated (exit 17)" in stdout.decode()


LOADED_MODULES = """
import sys
from oauth3.verifier.cli import run
code = run(sys.argv[1:])
watched = ("aiohttp", "asyncio", "dcap_qvl", "cryptography", "oauth3.verifier.steps")
print(code, *[name for name in watched if name in sys.modules], file=sys.stderr)
"""


def loaded_by(args: list[str]) -> list[str]:
    """Run oauth3-verify ARGS in a fresh interpreter: its exit code, then which of the watched
    modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED_MODULES, *args], capture_output=True, timeout=60, check=False
    )
    return done.stderr.decode().splitlines()[-1].split()


async def test_the_offline_paths_load_only_what_they_use(stack: Stack, tmp_path: Path) -> None:
    saved = tmp_path / "b.json"
    await verify(stack.simulated_args("--save-bundle", str(saved)))
    offline = ["--bundle", str(saved), "--allow-simulated", "--root-ca", str(stack.root_ca)]
    # the bundle carries its collateral: checked without an HTTP client or an event loop
    assert loaded_by([*offline, *stack.pins()]) == [
        "5",
        "dcap_qvl",
        "cryptography",
        "oauth3.verifier.steps",
    ]
    # a PCCS named on the command line is asked, so that path loads the HTTP client
    pccs = ["--pccs", "http://127.0.0.1:9"]
    assert loaded_by([*offline, *pccs])[:3] == ["2", "aiohttp", "asyncio"]
    assert loaded_by(["--help"]) == ["2"]
    assert loaded_by(["--bundle"]) == ["2"]
