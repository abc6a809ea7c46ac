"""The dstack guest-agent simulator over real unix sockets: wire rules, consistency, faults, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import dcap_qvl
import pytest
from aiohttp import web
from dstack_sdk import get_compose_hash

from oauth3.attestation import (
    compare_with_quote,
    decode_mr_config_id,
    parse_event_list,
    parse_event_log,
    parse_quote,
    read_boot_record,
)
from oauth3.simulator.app import DCAP, QUOTER, create_app
from oauth3.simulator.settings import SimulatorSettings, default_app_compose
from oauth3.simulator.state import CvmVariant
from oauth3.simulator.wire import RpcError, decode_hex, rust_debug
from tests.stack import simulator_process

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
JSON = {"Content-Type": "application/json"}
START_TIMEOUT = 15.0
# the keys dstack 0.5.5 hosts send, in their order (a real capture: quote-report.json)
VM_CONFIG_KEYS = [
    "spec_version",
    "os_image_hash",
    "cpu_count",
    "memory_size",
    "qemu_single_pass_add_pages",
    "pic",
    "pci_hole64_size",
    "num_gpus",
    "num_nvswitches",
    "hugepages",
    "hotplug_off",
    "qemu_version",
]
# the keys of dstack's 0.6 lite fixture (tdx-lite-getquote.json), in its order
VM_CONFIG_KEYS_LITE = [
    "os_image_hash",
    "cpu_count",
    "memory_size",
    "qemu_version",
    "pci_hole64_size",
    "hugepages",
    "num_gpus",
    "num_nvswitches",
    "hotplug_off",
    "image",
    "host_share_mode",
    "ovmf_variant",
    "tdx_attestation_variant",
    "tdx_measurement",
    "spec_version",
]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for AF_UNIX sockets (tmp_path can exceed the 107-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="o3", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def settings_for(sock_dir: Path, **overrides: Any) -> SimulatorSettings:
    base = SimulatorSettings(socket=sock_dir / "dstack.sock", app_compose=default_app_compose())
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def agent(settings: SimulatorSettings) -> AsyncIterator[tuple[web.Application, Any]]:
    """The simulator app on a real unix socket, and a client session connected to it."""
    app = create_app(settings, now=NOW)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(settings.socket)).start()
        connector = aiohttp.UnixConnector(path=str(settings.socket))
        async with aiohttp.ClientSession(connector=connector, base_url="http://dstack") as session:
            yield app, session
    finally:
        await runner.cleanup()


async def post(session: Any, path: str, body: bytes | str, **kwargs: Any) -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    async with session.post(path, data=data, **kwargs) as response:
        return response.status, await response.text()


async def get_quote(session: Any, report_data: bytes) -> dict[str, Any]:
    async with session.post("/GetQuote", json={"report_data": report_data.hex()}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        result: dict[str, Any] = await response.json()
        return result


async def info(session: Any) -> dict[str, Any]:
    async with session.post("/Info", json={}) as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


# ---------------------------------------------------------------- GetQuote and report_data


@pytest.mark.parametrize("size", [0, 1, 32, 64])
async def test_report_data_is_right_padded_into_the_quote(sock_dir: Path, size: int) -> None:
    report_data = bytes(range(1, size + 1))
    async with agent(settings_for(sock_dir)) as (_, session):
        answer = await get_quote(session, report_data)
    assert list(answer) == ["quote", "event_log", "report_data", "vm_config"]
    padded = report_data + bytes(64 - size)
    quote = bytes.fromhex(answer["quote"])
    assert quote[568:632] == padded
    assert bytes.fromhex(answer["report_data"]) == padded
    assert parse_quote(quote).report.report_data == padded


@pytest.mark.parametrize("body", ["", "{}", '{"report_data":""}', '{"report_data":"0x"}'])
async def test_missing_or_empty_report_data_means_zeros(sock_dir: Path, body: str) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        status, text = await post(session, "/GetQuote", body, headers=JSON)
    assert status == 200, text
    assert json.loads(text)["report_data"] == "00" * 64


@pytest.mark.parametrize(
    "hex_text", ["ABCDEF", "0xabcdef", "0xABcdEF", "abcdef"], ids=["upper", "0x", "mixed", "lower"]
)
async def test_hex_accepts_case_and_0x_prefix(sock_dir: Path, hex_text: str) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        status, text = await post(
            session,
            "/GetQuote",
            json.dumps({"report_data": hex_text, "unknown": [1]}),
            headers=JSON,
        )
    assert status == 200, text
    assert json.loads(text)["report_data"] == "abcdef" + "00" * 61


UPSTREAM_ERRORS = [
    ('{"report_data":"' + "ab" * 65 + '"}', "Report data is too long"),
    ('{"report_data":"abc"}', "Odd number of digits at line 1 column 21"),
    ('{"report_data":"abc","x":1}', "Odd number of digits at line 1 column 20"),
    ('{"report_data":"zz"}', "Invalid character 'z' at position 0 at line 1 column 20"),
    ('{"report_data":"0xabgd"}', "Invalid character 'g' at position 2 at line 1 column 24"),
    ('{"report_data":5}', "invalid type: integer `5`, expected a string at line 1 column 16"),
    (
        '{"report_data": true }',
        "invalid type: boolean `true`, expected a string at line 1 column 20",
    ),
    ("[]", "invalid type: sequence, expected struct RawQuoteArgs at line 1 column 0"),
    ('{"report_data":"aa",}', "trailing comma at line 1 column 21"),
]


@pytest.mark.parametrize(("body", "message"), UPSTREAM_ERRORS)
async def test_upstream_error_bodies(sock_dir: Path, body: str, message: str) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        status, text = await post(session, "/GetQuote", body, headers=JSON)
    assert status == 400
    assert text == '{\n  "error": ' + json.dumps(message) + "\n}"


@pytest.mark.parametrize("method", ["GetKey", "EmitEvent", "GetTlsKey", "Attest"])
async def test_unknown_methods_are_not_found_services(sock_dir: Path, method: str) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        status, text = await post(session, f"/{method}", "{}", headers=JSON)
    assert (status, json.loads(text)) == (400, {"error": f"Service not found: {method}"})


async def test_get_with_query_string_and_query_json_flag(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        async with session.get("/GetQuote", params={"report_data": "0xC0FFEE"}) as response:
            assert response.status == 200
            by_get = await response.json()
        async with session.get("/GetQuote", params={"report_data": "c0f"}) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "Odd number of digits"
        status, text = await post(session, "/GetQuote?json", '{"report_data":"c0ffee"}')
        async with session.get("/Info") as response:
            assert response.status == 200
    assert status == 200
    assert by_get["report_data"] == json.loads(text)["report_data"] == "c0ffee" + "00" * 61


async def test_non_json_requests_are_refused_clearly(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        plain = await post(session, "/GetQuote", b"\x0a\x02\x12\x34")
        typed = await post(session, "/Info", "{}", headers={"Content-Type": "text/plain"})
    for status, text in (plain, typed):
        assert status == 400
        assert "JSON only" in json.loads(text)["error"]


async def test_longer_paths_are_404(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir)) as (_, session):
        assert (await post(session, "/prpc/Tappd.TdxQuote", "{}", headers=JSON))[0] == 404
        assert (await post(session, "/GetQuote/extra", "{}", headers=JSON))[0] == 404
        assert (await post(session, "/", "{}", headers=JSON))[0] == 404


def test_hex_rules_match_the_hex_crate() -> None:
    assert decode_hex("0x0xABcd") == b"\xab\xcd"
    with pytest.raises(RpcError, match=r"^Invalid character 'X' at position 1$"):
        decode_hex("0XAB")
    assert rust_debug("'", "'") == "'\\''"
    assert rust_debug("\x1b", "'") == "'\\u{1b}'"


# ---------------------------------------------------------------- consistency


@pytest.mark.parametrize("fmt", ["full", "stripped"])
async def test_quote_event_log_and_info_agree(sock_dir: Path, fmt: str) -> None:
    compose = default_app_compose()
    async with agent(settings_for(sock_dir, event_log=fmt)) as (_, session):
        answer = await get_quote(session, b"nonce")
        document = await info(session)
    quote = parse_quote(bytes.fromhex(answer["quote"]))
    events = parse_event_log(answer["event_log"])
    assert all(compare_with_quote(events, quote.report.rtmr).matches)
    runtime = [e for e in events if e.is_runtime]
    if fmt == "stripped":
        assert all(e.digest == b"" for e in runtime)
        # dstack 0.6 keeps only the named ACPI events' marker, which lite verification reads
        assert all(
            e.event_payload == (b"ACPI DATA" if e.event.startswith("acpi-") else b"")
            for e in events
            if not e.is_runtime
        )
    else:
        assert all(len(e.digest) == 48 for e in events)
    assert [e.event for e in runtime] == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
        "key-provider",
        "storage-fs",
        "system-ready",
    ]
    facts = read_boot_record(events)
    digest = hashlib.sha256(compose).digest()
    tcb = json.loads(document["tcb_info"])
    assert facts.compose_hash == digest == decode_mr_config_id(quote.report.mr_config_id)
    assert tcb["app_compose"].encode() == compose
    assert document["compose_hash"] == tcb["compose_hash"] == digest.hex()
    assert facts.app_id == digest[:20] == bytes.fromhex(document["app_id"])
    assert facts.instance_id == bytes.fromhex(document["instance_id"])
    assert len(facts.instance_id or b"") == 20
    assert document["key_provider_info"] == facts.key_provider == '{"name":"none","id":""}'
    assert facts.app_events == ()
    vm_config = json.loads(answer["vm_config"])
    assert list(vm_config) == VM_CONFIG_KEYS_LITE
    assert vm_config["os_image_hash"] == document["os_image_hash"]
    assert document["app_name"] == json.loads(compose)["name"] == "oauth3"
    assert tcb["mrtd"] == quote.report.mr_td.hex()
    assert [tcb[f"rtmr{i}"] for i in range(4)] == [r.hex() for r in quote.report.rtmr]
    full_log = parse_event_list(tcb["event_log"])
    assert all(compare_with_quote(full_log, quote.report.rtmr).matches)
    assert all(len(e.digest) == 48 for e in full_log)
    aggregated = hashlib.sha256(
        quote.report.mr_td
        + b"".join(quote.report.rtmr)
        + quote.report.mr_config_id
        + quote.report.mr_owner
        + quote.report.mr_owner_config
    ).hexdigest()
    assert document["mr_aggregated"] == tcb["mr_aggregated"] == aggregated
    assert document["device_id"] == tcb["device_id"]
    assert document["device_id"] == hashlib.sha256(quote.header.user_data).hexdigest()
    assert json.loads(document["vm_config"])["os_image_hash"] == document["os_image_hash"]
    assert answer["vm_config"] == document["vm_config"]


def test_measurements_follow_the_seed_and_the_compose(sock_dir: Path) -> None:
    base = create_app(settings_for(sock_dir), now=NOW)
    again = create_app(settings_for(sock_dir), now=NOW)
    seeded = create_app(settings_for(sock_dir, seed="another"), now=NOW)
    other_app = create_app(settings_for(sock_dir, app_compose=b'{"name":"x"}'), now=NOW)

    def values(app: web.Application) -> tuple[bytes, ...]:
        report = parse_quote(app[QUOTER].cvm.quote(bytes(64))).report
        return (report.mr_td, *report.rtmr)

    assert values(base) == values(again)
    assert values(seeded)[:4] != values(base)[:4]
    assert values(other_app)[:4] == values(base)[:4]
    assert values(other_app)[4] != values(base)[4]


def test_default_app_compose_is_canonical_json_of_this_project() -> None:
    raw = default_app_compose()
    document = json.loads(raw)
    assert document["name"] == "oauth3"
    assert document["runner"] == "docker-compose"
    assert "sidecar:" in document["docker_compose_file"]
    assert "service:" in document["docker_compose_file"]
    assert get_compose_hash(document) == hashlib.sha256(raw).hexdigest()


async def test_quote_verifies_against_the_mock_root_only(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir)) as (app, session):
        quote = bytes.fromhex((await get_quote(session, b"verify me"))["quote"])
    dcap = app[DCAP]
    collateral = dcap_qvl.QuoteCollateralV3.from_json(dcap.collateral_json())
    at = int(NOW.timestamp())
    report = dcap_qvl.verify_with_root_ca(quote, collateral, dcap.root_ca_der, at)
    assert report.status == "UpToDate"
    other = create_app(settings_for(sock_dir, seed="someone else"), now=NOW)
    foreign = other[QUOTER].cvm.quote(bytes(64))
    with pytest.raises(ValueError, match=r"(?i)verif|signature|certificate|chain|issuer"):
        dcap_qvl.verify_with_root_ca(foreign, collateral, dcap.root_ca_der, at)


# ---------------------------------------------------------------- cost model and faults


async def test_concurrent_quotes_never_overlap(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir, quote_latency_ms=20)) as (app, session):
        answers = await asyncio.gather(*(get_quote(session, bytes([n]) * 8) for n in range(8)))
    record = list(app[QUOTER].record)
    assert len(record) == 16
    for position in range(0, 16, 2):
        (enter, first), (leave, second) = record[position], record[position + 1]
        assert (enter, leave) == ("enter", "exit")
        assert first == second
    assert sorted(call for kind, call in record if kind == "enter") == list(range(1, 9))
    assert {bytes.fromhex(a["report_data"])[0] for a in answers} == set(range(8))


async def test_fail_rate_one_answers_500(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir, fail_rate=1.0)) as (_, session):
        status, text = await post(session, "/GetQuote", "{}", headers=JSON)
        info_status = (await post(session, "/Info", "{}", headers=JSON))[0]
    assert status == 500
    assert "simulated fault" in json.loads(text)["error"]
    assert info_status == 200


async def test_wrong_report_data_rate_one_serves_another_report_data(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir, wrong_report_data_rate=1.0)) as (_, session):
        answer = await get_quote(session, b"expected")
    quoted = parse_quote(bytes.fromhex(answer["quote"])).report.report_data
    assert bytes.fromhex(answer["report_data"]) == b"expected".ljust(64, b"\0")
    assert quoted != b"expected".ljust(64, b"\0")


async def test_stall_rate_one_hangs_past_the_client_timeout(sock_dir: Path) -> None:
    async with agent(settings_for(sock_dir, stall_rate=1.0)) as (app, session):
        timeout = aiohttp.ClientTimeout(total=0.3)
        with pytest.raises(asyncio.TimeoutError):
            await post(session, "/GetQuote", "{}", headers=JSON, timeout=timeout)
        assert list(app[QUOTER].record) == [("enter", 1), ("exit", 1)]
        assert (await post(session, "/Version", "{}", headers=JSON))[0] == 200


def test_fault_mix_follows_the_rates_and_replays_with_the_seed(sock_dir: Path) -> None:
    def draws(seed: str) -> list[str]:
        settings = settings_for(
            sock_dir, seed=seed, fail_rate=0.2, stall_rate=0.1, wrong_report_data_rate=0.3
        )
        quoter = create_app(settings, now=NOW)[QUOTER]
        return [quoter.draw_fault() for _ in range(2000)]

    first = draws("a")
    assert first == draws("a")
    assert first != draws("b")
    shares = {kind: first.count(kind) / len(first) for kind in set(first)}
    assert abs(shares["fail"] - 0.2) < 0.04
    assert abs(shares["stall"] - 0.1) < 0.03
    assert abs(shares["wrong-report-data"] - 0.3) < 0.04
    assert abs(shares["none"] - 0.4) < 0.04


# ---------------------------------------------------------------- the real process


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oauth3.simulator", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=30,
        check=False,
    )


def curl_like(sock: Path, method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """A minimal HTTP/1.0 request over the unix socket; returns the response body."""
    lines = [f"{method} {path} HTTP/1.0", "Host: dstack", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(sock))
        client.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", head
    return payload


@pytest.mark.parametrize("fmt", ["full", "stripped"])
def test_inspect_reads_a_saved_getquote_answer(sock_dir: Path, fmt: str) -> None:
    compose = sock_dir / "app-compose.json"
    compose.write_bytes(b'{"name":"inspected","runner":"docker-compose"}\n')
    sock = sock_dir / "d.sock"
    with simulator_process(sock, "--event-log", fmt, env={"OAUTH3_SIM_APP_COMPOSE": str(compose)}):
        saved = sock_dir / "quote.json"
        saved.write_bytes(
            curl_like(
                sock,
                "POST",
                "/GetQuote",
                b'{"report_data":"00ff"}',
                Content_Type="application/json",
            )
        )
        document = json.loads(curl_like(sock, "GET", "/Info"))
    inspected = subprocess.run(
        [sys.executable, "-m", "oauth3.verifier.inspect_cli", str(saved)],
        capture_output=True,
        check=True,
        timeout=30,
        cwd=REPO,
    )
    result = json.loads(inspected.stdout)
    log = result["event_log"]
    assert log["rtmr_match"] == [True, True, True, True]
    assert log["app_id"] == document["app_id"]
    assert log["compose_hash"] == document["compose_hash"]
    assert log["instance_id"] == document["instance_id"]
    assert document["compose_hash"] == hashlib.sha256(compose.read_bytes()).hexdigest()
    assert result["quote"]["compose_hash_from_mr_config_id"] == document["compose_hash"]
    assert document["app_name"] == "inspected"
    assert result["declared_report_data_matches"] is True
    tcb_compose = json.loads(document["tcb_info"])["app_compose"].encode()
    assert hashlib.sha256(tcb_compose).hexdigest() == document["compose_hash"]


def test_process_replaces_a_stale_socket_and_removes_its_own(sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    assert sock.is_socket()
    with simulator_process(sock, "--seed", "stale") as process:
        assert json.loads(curl_like(sock, "GET", "/Version"))["version"].endswith("-simulator")
        assert sock.stat().st_mode & 0o777 == 0o666
        assert run_cli("--socket", str(sock), "--healthcheck").returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stdout is not None
        assert process.stdout.read() == b""
    assert not sock.exists()
    assert run_cli("--socket", str(sock), "--healthcheck").returncode == 1
    log_lines = [json.loads(line) for line in (sock_dir / "d.sock.log").read_text().splitlines()]
    requests = [line for line in log_lines if line["event"] == "request"]
    assert len(requests) == 2
    assert {r["path"] for r in requests} == {"/Version"}
    assert all(r["status"] == 200 and r["duration_ms"] >= 0 for r in requests)
    assert log_lines[-1]["event"] == "stopped"


def test_request_id_is_logged(sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    with simulator_process(sock):
        curl_like(sock, "GET", "/Info", X_Request_ID="trace-123")
    log_lines = [json.loads(line) for line in (sock_dir / "d.sock.log").read_text().splitlines()]
    requests = [line for line in log_lines if line["event"] == "request"]
    assert [(r["method"], r["path"], r.get("request_id")) for r in requests] == [
        ("GET", "/Info", "trace-123")
    ]


def test_process_refuses_a_regular_file_at_the_socket_path(sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    sock.write_text("precious")
    result = run_cli("--socket", str(sock))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not a socket" in result.stderr
    assert sock.read_text() == "precious"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--fail-rate", "2"], {}, "--fail-rate must be between 0 and 1"),
        (
            [],
            {"OAUTH3_SIM_EVENT_LOG": "bogus"},
            "OAUTH3_SIM_EVENT_LOG must be one of full, stripped",
        ),
        (["--quote-latency-ms", "soon"], {}, "--quote-latency-ms must be a number, got 'soon'"),
        (["--app-compose", "/nonexistent/app.json"], {}, "cannot read /nonexistent/app.json"),
        (["--fail-rate", "0.6", "--stall-rate", "0.6"], {}, "must not exceed 1"),
        (["--pccs-port", "70000"], {}, "--pccs-port must be between 0 and 65535"),
        (["--event-log", "nope"], {}, "invalid choice"),
    ],
)
def test_invalid_configuration_is_one_line_and_exit_2(
    sock_dir: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = run_cli("--socket", str(sock_dir / "d.sock"), *args, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert needle in result.stderr


def test_invalid_app_compose_content_is_refused(sock_dir: Path) -> None:
    compose = sock_dir / "bad.json"
    compose.write_bytes(b"[1, 2]")
    result = run_cli("--socket", str(sock_dir / "d.sock"), "--app-compose", str(compose))
    assert result.returncode == 2
    assert "must be a JSON object" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_dcap_dir_and_pccs_let_clients_verify_the_full_chain(sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    port = _free_port()
    dcap_dir = sock_dir / "dcap"
    with simulator_process(sock, "--dcap-dir", str(dcap_dir), "--pccs-port", str(port)):
        answer = json.loads(curl_like(sock, "POST", "/GetQuote?json", b'{"report_data":"aa"}'))
        url = f"http://127.0.0.1:{port}/tdx/certification/v4/tcb"
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, params={"fmspc": "B0C06F000000"}) as response,
        ):
            assert response.status == 200
            tcb = await response.json()
    quote = bytes.fromhex(answer["quote"])
    collateral = dcap_qvl.QuoteCollateralV3.from_json((dcap_dir / "collateral.json").read_text())
    root = (dcap_dir / "root-ca.der").read_bytes()
    report = dcap_qvl.verify_with_root_ca(quote, collateral, root, int(time.time()))
    assert report.status == "UpToDate"
    assert json.loads(collateral_text := (dcap_dir / "collateral.json").read_text())
    assert tcb["tcbInfo"] == json.loads(json.loads(collateral_text)["tcb_info"])


def test_vm_config_has_the_keys_of_real_captures(vectors: Path) -> None:
    fixtures = vectors / "dstack-head/verifier-fixtures"
    legacy = json.loads((fixtures / "quote-report.json").read_text())
    assert list(json.loads(legacy["vm_config"])) == VM_CONFIG_KEYS
    lite = json.loads((fixtures / "tdx-lite-getquote.json").read_text())
    assert list(json.loads(lite["vm_config"])) == VM_CONFIG_KEYS_LITE


async def test_without_a_release_the_host_sends_a_055_vm_config(sock_dir: Path) -> None:
    settings = settings_for(sock_dir, variant=CvmVariant(os_release="none"))
    async with agent(settings) as (_, session):
        answer = await get_quote(session, b"legacy")
    vm_config = json.loads(answer["vm_config"])
    assert list(vm_config) == VM_CONFIG_KEYS
    assert "tdx_measurement" not in vm_config
