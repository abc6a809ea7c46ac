"""`oauth3-run` (`make run`): simulator, sidecar and service as three processes on unix sockets."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from oauth3.runtime.cli import OneLineParser, fail

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    """One started role: its process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)


@dataclass(frozen=True, slots=True)
class StackPaths:
    """Where the run directory puts sockets, logs and the simulator's DCAP files."""

    run_dir: Path

    @property
    def agent_socket(self) -> Path:
        """The simulator's dstack.sock."""
        return self.run_dir / "dstack.sock"

    @property
    def sidecar_socket(self) -> Path:
        """The sidecar's own socket, the only one the service talks to."""
        return self.run_dir / "sidecar.sock"

    @property
    def app_compose(self) -> Path:
        """The rendered production manifest the simulator measures (when one was given)."""
        return self.run_dir / "app-compose.json"

    @property
    def dcap_dir(self) -> Path:
        """Mock root CA and collateral written by the simulator for offline verification."""
        return self.run_dir / "dcap"

    @property
    def policy(self) -> Path:
        """The relying party's policy for this simulated CVM (what make run's verify uses)."""
        return self.run_dir / "policy.toml"


def _start(name: str, args: list[str], env: dict[str, str], paths: StackPaths) -> Child:
    log_path = paths.run_dir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all, after the child exits
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", *args], env=env, stdout=log_file, stderr=log_file
    )
    return Child(name, process, log_path, log_file)


def _socket_accepts(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            probe.connect(str(path))
    except OSError:
        return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait(what: str, ready: Callable[[], bool], children: list[Child]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.process.returncode} "
                    f"while waiting for {what}; see {child.log_path}"
                )
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {START_TIMEOUT_S:.0f} s waiting for {what}")


def stop_all(children: list[Child]) -> None:
    """SIGTERM each child in reverse start order, wait, SIGKILL what is left; close the logs."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        child.log_file.close()


def _client_tool(module: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run one of the client tools (oauth3-phala, oauth3-verify) as a user would: a process,
    so this development-only package imports nothing of the verifier."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", module, *args], capture_output=True, timeout=120, check=False
    )


def render_manifest(manifest: Path, paths: StackPaths) -> str:
    """Render the Phala manifest to the run directory (oauth3-phala render); return its compose
    hash (hex); RuntimeError when it does not render."""
    done = _client_tool(
        "oauth3.phala", "render", str(manifest), "-o", str(paths.app_compose), "--json"
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot render {manifest}: {done.stderr.decode().strip()}")
    summary = json.loads(done.stdout)
    compose: str = summary["compose_hash"]
    return compose


def start_stack(
    paths: StackPaths,
    host: str,
    port: int,
    env: dict[str, str],
    *,
    pccs_port: int = 0,
    manifest: Path | None = None,
) -> list[Child]:
    """Start the three roles in order and wait until each is ready; raise RuntimeError if not.
    With `manifest`, the simulator measures its rendering, as a CVM measures the deployed one."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        render_manifest(manifest, paths)
    env = {
        **env,
        "OAUTH3_SIDECAR_SOCKET": str(paths.sidecar_socket),
        "OAUTH3_SIDECAR_AGENT_SOCKET": str(paths.agent_socket),
        "OAUTH3_HOST": host,
        "OAUTH3_PORT": str(port),
    }
    children: list[Child] = []
    try:
        simulator_args = ["oauth3.simulator", "--socket", str(paths.agent_socket)]
        simulator_args += ["--dcap-dir", str(paths.dcap_dir), "--pccs-port", str(pccs_port)]
        if manifest is not None:
            simulator_args += ["--app-compose", str(paths.app_compose)]
        children.append(_start("simulator", simulator_args, env, paths))
        _wait("the simulator socket", lambda: _socket_accepts(paths.agent_socket), children)
        children.append(_start("sidecar", ["oauth3.sidecar"], env, paths))
        _wait("the sidecar socket", lambda: _socket_accepts(paths.sidecar_socket), children)
        children.append(_start("service", ["oauth3.service"], env, paths))
        _wait("the service /readyz", lambda: _http_ok(f"http://{host}:{port}/readyz"), children)
        unwritten = write_policy(paths, f"http://{host}:{port}")
        if unwritten is not None:
            sys.stderr.write(f"oauth3-run: no {paths.policy}: {unwritten}\n")
    except BaseException:
        stop_all(children)
        raise
    return children


def write_policy(paths: StackPaths, base: str) -> str | None:
    """Write run/policy.toml the way a relying party starts one: check the running stack with
    oauth3-verify, pinning the compose hash of the manifest rendered here (known out of band),
    and keep what it observed (platform registers, mock root, TCB) with --write-policy.
    Returns why no policy was written (a simulator playing an attack fails the check), or None."""
    args = [base, "--allow-simulated", "--root-ca", str(paths.dcap_dir / "root-ca.der")]
    args += ["--collateral", str(paths.dcap_dir / "collateral.json"), "--json"]
    if paths.app_compose.exists():
        digest = hashlib.sha256(paths.app_compose.read_bytes()).hexdigest()
        args += ["--expect-compose-hash", digest]
    paths.policy.unlink(missing_ok=True)
    done = _client_tool("oauth3.verifier.cli", *args, "--write-policy", str(paths.policy))
    if paths.policy.exists():
        return None
    try:
        report = json.loads(done.stdout)
        failed = [s["reason"] for s in report.get("steps", []) if s["ok"] is False]
        why = str(report.get("error") or (failed[0] if failed else report["verdict"]))
    except (ValueError, KeyError, TypeError):
        why = done.stderr.decode(errors="replace").strip()
    return f"oauth3-verify exited {done.returncode}: {why[:300]}"


def pinned_releases(policy: Path) -> list[str]:
    """The OS releases (`[os] image_hashes`) a written policy pins; empty when it pins none."""
    try:
        document = tomllib.loads(policy.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    hashes = document.get("os", {}).get("image_hashes", [])
    return [h for h in hashes if isinstance(h, str)] if isinstance(hashes, list) else []


def _banner(paths: StackPaths, base: str, pccs_port: int, children: list[Child]) -> str:
    logs = ", ".join(str(c.log_path) for c in children)
    releases = pinned_releases(paths.policy)
    pinned = (
        f"the simulated OS release {releases[0]} (MRTD and RTMR0-2 recomputed from its "
        "measurement document)"
        if releases
        else "the platform registers"
    )
    return (
        f"oauth3 is running (simulated TDX): {base}\n"
        f"  curl {base}/info\n"
        f'  curl "{base}/attestation?nonce=$(openssl rand -hex 32)"\n'
        f"  .venv/bin/oauth3-verify {base} --allow-simulated \\\n"
        f"      --policy {paths.policy} --pccs http://127.0.0.1:{pccs_port}\n"
        f"policy: {paths.policy} pins the app's compose hash, {pinned} and the mock root\n"
        f"mock Intel PCCS: http://127.0.0.1:{pccs_port} (same collateral in {paths.dcap_dir})\n"
        f"logs: {logs}\n"
        "Ctrl-C stops all three.\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-run`: OAUTH3_RUN_DIR (./run), OAUTH3_PORT (8080), OAUTH3_PCCS_PORT,
    OAUTH3_MANIFEST (deploy/phala-app.yaml, rendered for the simulator when it exists)."""
    OneLineParser(
        prog="oauth3-run",
        description="Run simulator, sidecar and service locally, wired by unix sockets.",
    ).parse_args(argv)
    env = dict(os.environ)
    paths = StackPaths(Path(env.get("OAUTH3_RUN_DIR", "run")).resolve())
    host = "127.0.0.1"
    try:
        port = int(env.get("OAUTH3_PORT", "8080"))
        pccs_port = int(env.get("OAUTH3_PCCS_PORT", str(port + 1)))
        env.setdefault("OAUTH3_METRICS_PORT", str(port + 2))
        metrics_port = int(env["OAUTH3_METRICS_PORT"])
    except ValueError:
        fail("oauth3-run: OAUTH3_PORT, OAUTH3_PCCS_PORT, OAUTH3_METRICS_PORT must be port numbers")
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        manifest = Path(env.get("OAUTH3_MANIFEST", "deploy/phala-app.yaml"))
        children = start_stack(
            paths,
            host,
            port,
            env,
            pccs_port=pccs_port,
            manifest=manifest if manifest.is_file() else None,
        )
    except RuntimeError as exc:
        fail(f"oauth3-run: {exc}", 1)
    sys.stdout.write(_banner(paths, f"http://{host}:{port}", pccs_port, children))
    if metrics_port:
        sys.stdout.write(f"metrics: http://{host}:{metrics_port}/metrics\n")
    sys.stdout.flush()
    exited: Child | None = None
    while not stopping and exited is None:
        exited = next((c for c in children if c.process.poll() is not None), None)
        time.sleep(0.1)
    stop_all(children)
    if exited is not None:
        fail(
            f"oauth3-run: {exited.name} exited with code {exited.process.returncode}; "
            f"see {exited.log_path}",
            1,
        )
    sys.stdout.write("oauth3-run: stopped\n")


if __name__ == "__main__":
    main()
