"""Start the local stack (simulator, sidecar, service) as real processes, as `make run` does."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from oauth3.phala.manifest import render
from oauth3.simulator.devstack import Child, StackPaths, start_stack, stop_all
from tests.fakes import short_socket_dir
from tests.verifycli import pins_for

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "deploy" / "phala-app.yaml"


def manifest_compose_hash() -> str:
    """What `oauth3-phala render deploy/phala-app.yaml` prints: the stack measures that."""
    return render(MANIFEST.read_bytes()).compose_hash.hex()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningStack:
    """A started stack: its base URL, paths and processes."""

    base_url: str
    pccs_url: str
    paths: StackPaths
    children: list[Child]

    def child(self, name: str) -> Child:
        """The process of one role."""
        return next(c for c in self.children if c.name == name)

    def start_sidecar(self) -> None:
        """Start a new sidecar process in place of the stopped or killed one."""
        sidecar = self.child("sidecar")
        env = {
            **os.environ,
            "OAUTH3_SIDECAR_SOCKET": str(self.paths.sidecar_socket),
            "OAUTH3_SIDECAR_AGENT_SOCKET": str(self.paths.agent_socket),
        }
        sidecar.process = subprocess.Popen(
            [sys.executable, "-m", "oauth3.sidecar"], env=env, stderr=sidecar.log_file
        )


def policy(stack: RunningStack) -> list[str]:
    """The policy make run wrote for a stack: its compose hash, platform and mock root."""
    return ["--policy", str(stack.paths.policy)]


def root(stack: RunningStack) -> list[str]:
    """Only the stack's mock root: nothing pins the app or the platform."""
    return ["--root-ca", str(stack.paths.dcap_dir / "root-ca.der")]


def collateral(stack: RunningStack) -> list[str]:
    """The collateral the stack's simulator wrote (no PCCS needed)."""
    return ["--collateral", str(stack.paths.dcap_dir / "collateral.json")]


@asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serve every GET with `handler` on 127.0.0.1 (a man in the middle, a hostile server)."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def pinned_release(stack: RunningStack) -> str:
    """The simulated OS release (os_image_hash, hex) the stack boots, as make run's policy pins
    it."""
    releases: list[str] = tomllib.loads(stack.paths.policy.read_text())["os"]["image_hashes"]
    return releases[0]


def observed_pins(stack: RunningStack) -> list[str]:
    """The stack's own mock root, compose hash and platform registers as oauth3-verify flags:
    what a relying party would pin for it. make run writes no policy for a stack its own check
    refuses (one playing an attack, or a TCB status outside the default policy)."""
    with urllib.request.urlopen(f"{stack.base_url}/attestation", timeout=10) as response:
        quote = base64.b64decode(json.loads(response.read())["quote"])
    compose = hashlib.sha256(stack.paths.app_compose.read_bytes()).hexdigest()
    return [*root(stack), *pins_for(quote, compose)]


@contextmanager
def running_stack(manifest: Path = MANIFEST, **env: str) -> Iterator[RunningStack]:
    """Start the three processes (extra environment from `env`; the simulator measures
    `manifest`, rendered) and stop them afterwards."""
    paths = StackPaths(short_socket_dir())
    port, pccs_port = free_port(), free_port()
    children = start_stack(
        paths, "127.0.0.1", port, {**os.environ, **env}, pccs_port=pccs_port, manifest=manifest
    )
    try:
        yield RunningStack(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{pccs_port}", paths, children
        )
    finally:
        stop_all(children)


SIMULATOR_START_TIMEOUT_S = 20.0


def connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextmanager
def simulator_process(
    sock: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `python -m oauth3.simulator`, wait until it serves, and always stop it."""
    logs = sock.parent / f"{sock.name}.log"
    with logs.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "oauth3.simulator", "--socket", str(sock), *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            cwd=REPO_ROOT,
        )
    try:
        deadline = time.monotonic() + SIMULATOR_START_TIMEOUT_S
        while not connectable(sock):
            if process.poll() is not None:
                pytest.fail(f"simulator exited early: {logs.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("simulator did not start listening")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
