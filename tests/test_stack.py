"""The whole local stack as real processes: `oauth3-run`, the official SDK through the sidecar."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
from dstack_sdk import AsyncDstackClient

from oauth3.attestation import parse_quote
from oauth3.phala.manifest import render
from tests.fakes import short_socket_dir
from tests.stack import MANIFEST, RunningStack, free_port, running_stack

NONCE = "c0ffee" + "11" * 29


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    with running_stack() as started:
        yield started


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_binding_through_real_processes(stack: RunningStack) -> None:
    status, info = await fetch(f"{stack.base_url}/info")
    assert status == 200
    for query, nonce in (("", None), (f"?nonce={NONCE}", NONCE)):
        status, body = await fetch(f"{stack.base_url}/attestation{query}")
        assert status == 200, body
        doc = orjson.loads(body)
        report_data = bytes.fromhex(doc["reportData"])
        assert report_data[:32] == hashlib.sha256(info).digest()
        assert report_data[32:] == (bytes.fromhex(nonce) if nonce else bytes(32))
        assert parse_quote(base64.b64decode(doc["quote"])).report.report_data == report_data


async def test_official_sdk_through_the_sidecar(stack: RunningStack) -> None:
    client = AsyncDstackClient(str(stack.paths.sidecar_socket), timeout=10)
    async with client:
        report_data = b"\x01\x02sdk".ljust(64, b"\xee")
        quote = await client.get_quote(report_data)
        assert bytes.fromhex(quote.report_data) == report_data
        assert parse_quote(quote.decode_quote()).report.report_data == report_data
        with pytest.raises(httpx.HTTPStatusError) as short:
            await client.get_quote(b"\x01\x02sdk")  # the agent would zero-pad it
        assert short.value.response.status_code == 400
        assert "exactly 64 bytes" in short.value.response.json()["error"]
        info = await client.info()
        assert info.compose_hash
        refused = [
            client.get_key("wallet", "signing"),
            client.get_tls_key(subject="x"),
            client.sign("secp256k1", b"msg"),
            client.emit_event("evil", b"payload"),
            client.attest(b"nonce"),
        ]
        for call in refused:
            with pytest.raises(httpx.HTTPStatusError) as info_error:
                await call
            assert info_error.value.response.status_code == 403


async def test_sidecar_process_restart_recovers(stack: RunningStack) -> None:
    sidecar = stack.child("sidecar")
    sidecar.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(sidecar.process.wait, 10)
    assert not stack.paths.sidecar_socket.exists()  # removed at exit
    status, _ = await fetch(f"{stack.base_url}/attestation?nonce={NONCE}")
    assert status == 503
    assert (await fetch(f"{stack.base_url}/info"))[0] == 200
    await asyncio.to_thread(stack.start_sidecar)
    for _ in range(100):
        status, _ = await fetch(f"{stack.base_url}/attestation?nonce={NONCE}")
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200


async def test_sigterm_lets_inflight_requests_finish() -> None:
    with running_stack(OAUTH3_SIM_QUOTE_LATENCY_MS="600") as slow:
        request = asyncio.create_task(fetch(f"{slow.base_url}/attestation?nonce={NONCE}"))
        await asyncio.sleep(0.2)
        service = slow.child("service")
        service.process.send_signal(signal.SIGTERM)
        status, _ = await request
        assert status == 200
        assert await asyncio.to_thread(service.process.wait, 10) == 0


def test_make_run_command_end_to_end() -> None:
    run_dir = short_socket_dir()
    port = free_port()
    env = {
        **os.environ,
        "OAUTH3_RUN_DIR": str(run_dir),
        "OAUTH3_PORT": str(port),
        "OAUTH3_PCCS_PORT": str(free_port()),
        "OAUTH3_MANIFEST": str(MANIFEST),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "oauth3.simulator.devstack"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        try:
            check_running_stack(process, port, run_dir)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def verify_command(banner: str) -> list[str]:
    """The oauth3-verify command line the banner prints, run with this interpreter."""
    lines = banner.splitlines()
    start = next(i for i, line in enumerate(lines) if "oauth3-verify" in line)
    text = ""
    for line in lines[start:]:
        text += line.rstrip("\\").rstrip() + " "
        if not line.endswith("\\"):
            break
    words = shlex.split(text)
    assert words[0] == ".venv/bin/oauth3-verify", words
    return [sys.executable, "-m", "oauth3.verifier.cli", *words[1:]]


def check_running_stack(process: subprocess.Popen[bytes], port: int, run_dir: Path) -> None:
    assert process.stdout is not None
    assert process.stderr is not None
    banner = process.stdout.readline().decode()
    assert f"http://127.0.0.1:{port}" in banner, banner + process.stderr.read().decode()
    while "Ctrl-C" not in banner:
        banner += process.stdout.readline().decode()
    rendered = render(MANIFEST.read_bytes())
    assert f"--policy {run_dir / 'policy.toml'}" in banner
    written = tomllib.loads((run_dir / "policy.toml").read_text())
    assert written["app"]["compose_hashes"] == [rendered.compose_hash.hex()]
    # the simulated OS release is pinned, not raw registers, and the banner names it
    (release,) = written["os"]["image_hashes"]
    assert "platform" not in written
    assert f"the simulated OS release {release}" in banner
    assert (run_dir / "app-compose.json").read_bytes() == rendered.app_compose
    # the verify command make run prints verifies the local stack, exit 0
    verified = subprocess.run(verify_command(banner), capture_output=True, timeout=60, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.decode().splitlines()[-1].startswith("SIMULATED (exit 0)")
    assert "exactly what the pinned OS release boots to" in verified.stdout.decode()
    info = subprocess.run(
        ["curl", "-sf", f"http://127.0.0.1:{port}/info"], capture_output=True, check=True
    ).stdout
    attestation = subprocess.run(
        ["curl", "-sf", f"http://127.0.0.1:{port}/attestation?nonce={NONCE}"],
        capture_output=True,
        check=True,
    ).stdout
    doc = orjson.loads(attestation)
    assert doc["reportData"] == hashlib.sha256(info).hexdigest() + NONCE
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert b"stopped" in out
    assert not (run_dir / "sidecar.sock").exists()
    assert not (run_dir / "dstack.sock").exists()
