"""The compose deployment on a real Docker engine: verify, hardening, sidecar outage, teardown.

Selected only by `make e2e` (marker e2e); `.ci/e2e.sh` starts the engine and builds the images.
Without an engine these tests fail (the stack cannot come up); they never skip.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import orjson
import pytest

from tests.verifycli import platform_flags

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROJECT = os.environ.get("OAUTH3_E2E_PROJECT", "oauth3e2e")
BASE_URL = "http://127.0.0.1:8080"
RUNTIME_UID = "10001"
ROLES = ("simulator", "sidecar", "service")
UP_TIMEOUT_S = 180
READY_TIMEOUT_S = 60


def compose_command() -> list[str]:
    """docker-compose (1.29) if installed, else `docker compose`; OAUTH3_COMPOSE overrides."""
    if os.environ.get("OAUTH3_COMPOSE"):
        base = shlex.split(os.environ["OAUTH3_COMPOSE"])
    elif shutil.which("docker-compose"):
        base = ["docker-compose"]
    else:
        base = ["docker", "compose"]
    files = ["-f", str(DEPLOY / "docker-compose.yml"), "-f", str(DEPLOY / "docker-compose.ci.yml")]
    return [*base, "-p", PROJECT, *files]


def compose(*args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one compose command; raise with its output when it fails."""
    result = subprocess.run(
        [*compose_command(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"compose {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result


def http_status(url: str) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture(scope="module")
def stack() -> Iterator[None]:
    """The stack from docker-compose.yml + the CI overlay, up and ready; always torn down."""
    compose("down", "-v", "--remove-orphans")
    try:
        compose("up", "-d", "--no-build")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while http_status(f"{BASE_URL}/readyz") != 200:
            if time.monotonic() > deadline:
                logs = compose("logs", "--no-color", "--tail", "20").stdout
                raise AssertionError(f"service not ready in {READY_TIMEOUT_S} s:\n{logs}")
            time.sleep(0.25)
        yield
    finally:
        compose("down", "-v", "--remove-orphans")


def project_labels(**labels: str) -> list[str]:
    """Docker label filters on this compose project (and more compose labels)."""
    wanted = [f"com.docker.compose.project={PROJECT}"]
    return wanted + [f"com.docker.compose.{key}={value}" for key, value in labels.items()]


def container_filter(**labels: str) -> str:
    """The containers endpoint takes its filters JSON-encoded."""
    return orjson.dumps({"label": project_labels(**labels)}).decode()


def get_json(url: str) -> Any:
    """GET a JSON document (blocking; call it in a thread)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


async def role_container(docker: aiodocker.Docker, role: str) -> dict[str, Any]:
    """The inspected container of one compose service (exactly one must exist)."""
    found = await docker.containers.list(all=True, filters=container_filter(service=role))
    assert len(found) == 1, f"expected one {role} container, found {len(found)}"
    return dict(await found[0].show())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an oauth3 module as a CLI with this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_verifier_accepts_the_stack_with_the_rendered_compose_hash(
    stack: None, tmp_path: Path
) -> None:
    rendered = run_cli(
        "oauth3.phala", "render", str(DEPLOY / "phala-app.yaml"), "-o",
        str(tmp_path / "app-compose.json"), "--json",
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    compose_hash = orjson.loads(rendered.stdout)["compose_hash"]

    async with aiodocker.Docker() as docker:
        simulator = await docker.containers.get((await role_container(docker, "simulator"))["Id"])
        archive = await simulator.get_archive("/var/lib/oauth3/dcap")
        with archive:
            for name in ("root-ca.der", "collateral.json"):
                member = archive.extractfile(f"dcap/{name}")
                assert member is not None, f"simulator wrote no {name}"
                (tmp_path / name).write_bytes(member.read())
        service = await role_container(docker, "service")

    dcap = ["--root-ca", str(tmp_path / "root-ca.der")]
    dcap += ["--collateral", str(tmp_path / "collateral.json")]
    unpinned = run_cli(
        "oauth3.verifier.cli", BASE_URL, "--allow-simulated", *dcap,
        "--expect-compose-hash", compose_hash, "--json",
    )  # fmt: skip
    assert unpinned.returncode == 3, unpinned.stdout + unpinned.stderr  # platform not pinned
    # the relying party's platform pins, taken here from the stack itself (out of band in life)
    attestation = await asyncio.to_thread(get_json, f"{BASE_URL}/attestation")
    platform = platform_flags(base64.b64decode(attestation["quote"]))
    verified = run_cli(
        "oauth3.verifier.cli", BASE_URL, "--allow-simulated", *dcap, *platform,
        "--expect-compose-hash", compose_hash, "--json",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    verdict = orjson.loads(verified.stdout)
    assert verdict["compose_hash"] == compose_hash

    wrong = format(int(compose_hash, 16) ^ 1, "064x")
    refused = run_cli(
        "oauth3.verifier.cli", BASE_URL, "--allow-simulated", *dcap, *platform,
        "--expect-compose-hash", wrong, "--json",
    )  # fmt: skip
    assert refused.returncode == 16, refused.stdout + refused.stderr

    info = await asyncio.to_thread(get_json, f"{BASE_URL}/info")
    baked = next(e for e in service["Config"]["Env"] if e.startswith("OAUTH3_BUILD_INFO="))
    assert info["build_info"] == orjson.loads(baked.partition("=")[2])
    expected_commit = os.environ.get("OAUTH3_E2E_GIT_COMMIT")
    if expected_commit:
        assert info["build_info"]["git_commit"] == expected_commit


async def test_containers_are_hardened_and_the_agent_socket_stays_with_the_sidecar(
    stack: None,
) -> None:
    async with aiodocker.Docker() as docker:
        shown = {role: await role_container(docker, role) for role in ROLES}
        for role, container in shown.items():
            host = container["HostConfig"]
            assert container["Config"]["User"].split(":")[0] == RUNTIME_UID, role
            assert host["ReadonlyRootfs"] is True, role
            assert host["CapDrop"] == ["ALL"], role
            assert not host.get("CapAdd"), role
            assert not host["Privileged"], role
            assert "no-new-privileges:true" in (host.get("SecurityOpt") or []), role
            uid = await exec_output(docker, container["Id"], ["id", "-u"])
            assert uid.strip() == RUNTIME_UID, f"{role} runs as uid {uid.strip()}"

        for role in ("simulator", "sidecar"):
            assert shown[role]["HostConfig"]["NetworkMode"] == "none", role
            assert set(shown[role]["NetworkSettings"]["Networks"]) <= {"none"}, role
        assert shown["service"]["HostConfig"]["NetworkMode"] == "host"

        volumes = {
            role: {m["Name"]: m["Destination"] for m in c["Mounts"] if m["Type"] == "volume"}
            for role, c in shown.items()
        }
        dstack, sidecar_socket = f"{PROJECT}_dstack-socket", f"{PROJECT}_sidecar-socket"
        assert volumes["simulator"].get(dstack) == "/var/run/dstack"
        assert volumes["sidecar"].get(dstack) == "/var/run/dstack"
        assert volumes["sidecar"].get(sidecar_socket) == "/var/run/oauth3"
        assert volumes["service"] == {sidecar_socket: "/var/run/oauth3"}
        assert sidecar_socket not in volumes["simulator"]
        service_mounts = shown["service"]["Mounts"]
        assert not [m for m in service_mounts if "dstack" in m.get("Source", "") + m["Destination"]]


async def exec_output(docker: aiodocker.Docker, container_id: str, cmd: list[str]) -> str:
    """Run a command in a running container and return its stdout."""
    container = await docker.containers.get(container_id)
    execution = await container.exec(cmd, stdout=True, stderr=False)
    chunks = []
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            chunks.append(message.data)
    return b"".join(chunks).decode()


@dataclass(frozen=True, slots=True)
class Sample:
    """One request of the steady stream."""

    started: float
    ended: float
    path: str
    status: int


async def steady_stream(
    session: aiohttp.ClientSession, samples: list[Sample], stop: asyncio.Event
) -> None:
    """Alternate /attestation?nonce=… and /info until `stop`, one request at a time."""
    budget = 5000
    while not stop.is_set() and budget:
        budget -= 1
        for path in (f"/attestation?nonce={secrets.token_hex(32)}", "/info"):
            started = time.monotonic()
            try:
                async with session.get(BASE_URL + path) as response:
                    await response.read()
                    status = response.status
                    if status == 503:
                        assert response.headers.get("Retry-After"), "503 without Retry-After"
                        assert response.content_type == "application/problem+json"
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            samples.append(Sample(started, time.monotonic(), path.split("?")[0], status))
        await asyncio.sleep(0.01)


async def wait_healthy(docker: aiodocker.Docker, container_id: str, within: float) -> None:
    """Until Docker reports the container healthy."""
    deadline = time.monotonic() + within
    container = await docker.containers.get(container_id)
    while True:
        state = (await container.show())["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return
        assert time.monotonic() < deadline, f"not healthy after {within} s: {state}"
        await asyncio.sleep(0.25)


async def test_sidecar_outage_gives_503s_then_recovers_without_restarting_the_service(
    stack: None,
) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiodocker.Docker() as docker, aiohttp.ClientSession(timeout=timeout) as session:
        service_before = (await role_container(docker, "service"))["State"]
        sidecar_id = (await role_container(docker, "sidecar"))["Id"]
        sidecar = await docker.containers.get(sidecar_id)
        samples: list[Sample] = []
        stop = asyncio.Event()
        load = asyncio.create_task(steady_stream(session, samples, stop))
        try:
            await asyncio.sleep(1.0)
            stopping = time.monotonic()
            await sidecar.stop(t=5)
            stopped = time.monotonic()
            await asyncio.sleep(2.0)
            starting = time.monotonic()
            await sidecar.start()
            await wait_healthy(docker, sidecar_id, 30)
            healthy = time.monotonic()
            deadline = healthy + 15
            while not any(s.started > healthy and s.status == 200 for s in samples[-4:]):
                assert time.monotonic() < deadline, "no successful quote after the restart"
                await asyncio.sleep(0.1)
            recovered = time.monotonic()
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            await load

        service_after = (await role_container(docker, "service"))["State"]

    before = [s for s in samples if s.ended < stopping]
    outage = [s for s in samples if s.started > stopped and s.ended < starting]
    after = [s for s in samples if s.started > recovered]
    assert before
    assert {s.status for s in before} == {200}, before
    assert [s for s in outage if s.path == "/attestation"], "no request during the outage"
    assert {s.status for s in outage if s.path == "/attestation"} == {503}, outage
    assert {s.status for s in outage if s.path == "/info"} == {200}, outage
    assert after
    assert {s.status for s in after} == {200}, after
    transitions = [s for s in samples if s not in before and s not in outage and s not in after]
    assert {s.status for s in transitions} <= {200, 503}, transitions
    assert service_after["StartedAt"] == service_before["StartedAt"]
    assert service_after["Running"] is True


async def test_compose_down_leaves_nothing_behind(stack: None) -> None:
    compose("down", "-v", "--remove-orphans")
    async with aiodocker.Docker() as docker:
        containers = await docker.containers.list(all=True, filters=container_filter())
        volumes = await docker.volumes.list(filters={"label": project_labels()})  # type: ignore[no-untyped-call]
        networks = await docker.networks.list(filters={"label": project_labels()})
    assert containers == []
    assert not volumes.get("Volumes"), volumes
    assert networks == []
    assert http_status(f"{BASE_URL}/healthz") is None
