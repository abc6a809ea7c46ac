"""`make bench`: start the stack and its baselines, drive fixed loads, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from oauth3.attestation.report_data import report_data_for
from oauth3.simulator.devstack import Child, StackPaths, start_stack, stop_all

from . import startup
from .loadgen import Samples, closed_loop, getter, percentile
from .profile import py_spy, start_recording, summarise
from .report import (
    B3,
    B4,
    B7,
    Comparison,
    LineCount,
    Memory,
    ProfiledRun,
    Results,
    machine_facts,
    render,
)
from .startup import B6
from .wrk import LoadStats, ensure_wrk, nonce_requests, run_wrk, wrk_version

REPO = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("attestation", "runtime", "sidecar", "service", "verifier", "simulator")
HOST = "127.0.0.1"
QUOTE_LATENCY_MS = 39
CONNECTIONS = 32
NONCE_CONCURRENCY = 8
OVERLOAD_CONCURRENCY = 128
BATCH_CONCURRENCY = 256
CLIENT_TIMEOUT_S = 10
START_TIMEOUT_S = 30
PARTS = ("B1", "B2", "B3", "B4", "B6", "B7")
TRACE_SEGMENTS = (
    "client to service and back (TCP, HTTP parsing, outside the service's handler)",
    "service around its sidecar call (unix hop both ways, quote checks, body)",
    "sidecar around its agent call (validation, queue, relaying)",
    "sidecar to agent and back (unix hop, outside the simulator's handler)",
    "simulator's handler (the 39 ms quote latency and signing)",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how often each figure is measured."""

    runs: int
    run_seconds: int
    warmup_seconds: int
    latency_pairs: int
    verify_repeats: int
    startup_rounds: int


FULL = Plan(
    runs=3, run_seconds=5, warmup_seconds=2, latency_pairs=40, verify_repeats=30, startup_rounds=15
)
QUICK = Plan(
    runs=1, run_seconds=2, warmup_seconds=1, latency_pairs=15, verify_repeats=5, startup_rounds=5
)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def fetch(url: str) -> bytes:
    """GET a loopback URL; raise unless 200."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URL we built
        body: bytes = response.read()
        return body


def wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until `url` answers, or fail if the process died or START_TIMEOUT_S passed."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            fetch(url)
        except OSError:
            time.sleep(0.05)
            continue
        return
    raise RuntimeError(f"timed out waiting for {url}")


@contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m ARGS` for the block's duration; stop it by pid afterwards."""
    with log.open("ab") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=sink, stderr=sink
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step(message: str) -> None:
    """One progress line on stderr."""
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


class Driver:
    """Runs fixed-duration loads with wrk (or the aiohttp fallback) and keeps every run."""

    def __init__(self, wrk: str | None, plan: Plan) -> None:
        self.wrk = wrk
        self.plan = plan
        self.completed: Counter[str] = Counter()  # by URL, warm-ups included

    def load(self, url: str, seconds: int, pid: int | None = None) -> LoadStats:
        """One closed-loop run of CONNECTIONS connections against `url`; with `pid`, also the
        CPU time that server process used meanwhile."""
        cpu_before = cpu_seconds(pid) if pid else None
        stats = self._load(url, seconds)
        self.completed[url] += stats.requests
        if pid and cpu_before is not None:
            stats = dataclasses.replace(stats, server_cpu_s=cpu_seconds(pid) - cpu_before)
        return stats

    def _load(self, url: str, seconds: int) -> LoadStats:
        if self.wrk is not None:
            return run_wrk(
                self.wrk, url, connections=CONNECTIONS, seconds=seconds, timeout_s=CLIENT_TIMEOUT_S
            )
        samples = asyncio.run(_python_load(url, CONNECTIONS, seconds))
        return LoadStats(
            requests=len(samples.statuses),
            seconds=samples.elapsed,
            p50_ms=percentile(samples.latencies, 50) * 1000,
            p99_ms=percentile(samples.latencies, 99) * 1000,
            non_2xx=sum(1 for s in samples.statuses if not 200 <= s < 300),
            timeouts=samples.timeouts,
            errors=samples.errors,
        )

    def compare(self, name: str, targets: dict[str, tuple[str, int]]) -> Comparison:
        """Warm each target (label: url, server pid) up, then `plan.runs` rounds interleaving
        the targets."""
        plan = self.plan
        for url, _ in targets.values():
            self.load(url, plan.warmup_seconds)
        runs: dict[str, list[LoadStats]] = {label: [] for label in targets}
        for round_no in range(plan.runs):
            for label, (url, pid) in targets.items():
                runs[label].append(self.load(url, plan.run_seconds, pid))
            step(f"{name} round {round_no + 1}/{plan.runs}: " + _rps_line(runs))
        return Comparison(name, runs)


def _rps_line(runs: dict[str, list[LoadStats]]) -> str:
    return ", ".join(f"{label} {stats[-1].rps:,.0f}/s" for label, stats in runs.items())


async def _python_load(url: str, concurrency: int, seconds: float) -> Samples:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await closed_loop(
            getter(session, lambda: url), concurrency=concurrency, duration=seconds
        )


def _nonce_url(base: str) -> Callable[[], str]:
    return lambda: f"{base}/attestation?nonce={secrets.token_hex(32)}"


async def _agent_session(agent_socket: Path) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(agent_socket)), timeout=timeout
    )


async def _direct_quote(agent: aiohttp.ClientSession, digest: bytes) -> int:
    payload = {"report_data": report_data_for(digest, secrets.token_bytes(32)).hex()}
    async with agent.post("http://dstack/GetQuote", json=payload) as response:
        await response.read()
        return response.status


async def _traced_quote(session: aiohttp.ClientSession, base: str, request_id: str) -> int:
    """One nonce request whose X-Request-ID lets the three logs be joined afterwards."""
    url = _nonce_url(base)()
    async with session.get(url, headers={"X-Request-ID": request_id}) as response:
        await response.read()
        return response.status


def trace_segments(run_dir: Path, client_ms: dict[str, float]) -> dict[str, list[float]]:
    """Where each traced B3 request spent its time, from the canonical lines of the three
    processes (joined by request id): ms per segment, one value per request found in all."""
    durations: dict[str, dict[str, dict[str, Any]]] = {}
    for role in ("service", "sidecar", "simulator"):
        for raw in (run_dir / f"{role}.log").read_bytes().splitlines():
            line = orjson.loads(raw)
            request_id = line.get("request_id")
            if line.get("event") == "request" and request_id in client_ms:
                durations.setdefault(request_id, {})[role] = line
    segments: dict[str, list[float]] = {name: [] for name in TRACE_SEGMENTS}
    for request_id, lines in durations.items():
        if len(lines) < 3 or "agent_ms" not in lines["sidecar"]:
            continue
        client = client_ms[request_id]
        service = lines["service"]["duration_ms"]
        sidecar = lines["sidecar"]["duration_ms"]
        agent = lines["sidecar"]["agent_ms"]
        simulator = lines["simulator"]["duration_ms"]
        for name, value in zip(
            TRACE_SEGMENTS,
            (client - service, service - sidecar, sidecar - agent, agent - simulator, simulator),
            strict=True,
        ):
            segments[name].append(value)
    return segments


async def bench_nonce_path(base: str, agent_socket: Path, digest: bytes, plan: Plan) -> B3:
    """B3: added latency over a direct agent call, throughput, and overload behaviour."""
    result = B3(capacity=1000 / QUOTE_LATENCY_MS, overload_concurrency=OVERLOAD_CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    agent = await _agent_session(agent_socket)
    connector = aiohttp.TCPConnector(limit=OVERLOAD_CONCURRENCY)
    async with agent, aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        service = getter(session, _nonce_url(base))
        for _ in range(5):  # warm-up: connections open, code paths hot
            await _direct_quote(agent, digest)
            await service()
        for _ in range(plan.runs):
            direct_run: list[float] = []
            service_run: list[float] = []
            for _ in range(plan.latency_pairs):
                began = time.perf_counter()
                assert await _direct_quote(agent, digest) == 200
                direct_run.append(time.perf_counter() - began)
                request_id = f"b3-{len(result.traced)}"
                began = time.perf_counter()
                assert await _traced_quote(session, base, request_id) == 200
                service_run.append(time.perf_counter() - began)
                result.traced[request_id] = service_run[-1] * 1000
            result.direct_latency.append(direct_run)
            result.service_latency.append(service_run)
        step("B3 latency pairs done")
        for _ in range(plan.runs):
            result.direct_throughput.append(
                await closed_loop(
                    lambda: _direct_quote(agent, digest),
                    concurrency=NONCE_CONCURRENCY,
                    duration=plan.run_seconds,
                )
            )
            result.service_throughput.append(
                await closed_loop(service, concurrency=NONCE_CONCURRENCY, duration=plan.run_seconds)
            )
        step("B3 throughput done")
        for _ in range(plan.runs):
            result.overload.append(
                await closed_loop(
                    service, concurrency=OVERLOAD_CONCURRENCY, duration=plan.run_seconds
                )
            )
            await asyncio.sleep(1)  # let the queue drain between runs
        step("B3 overload done")
    return result


def bench_batched(
    driver: Driver, base: str, agent_socket: Path, digest: bytes, metrics_url: str
) -> B7:
    """B7: the agent's quote rate, then fresh attestations at BATCH_CONCURRENCY one quote per
    client (v1) and batched (oauth3/v2), interleaved; needs wrk (random nonces per request)."""
    plan = driver.plan
    result = B7(quote_ms=QUOTE_LATENCY_MS, concurrency=BATCH_CONCURRENCY)

    async def agent_rate() -> Samples:
        async with await _agent_session(agent_socket) as agent:
            return await closed_loop(
                lambda: _direct_quote(agent, digest),
                concurrency=NONCE_CONCURRENCY,
                duration=plan.run_seconds,
            )

    if driver.wrk is None:
        return result
    url = f"{base}/attestation"
    scripts = {"v1": nonce_requests("/attestation", None)}
    scripts["v2"] = nonce_requests("/attestation", "oauth3/v2")

    def load(layout: str, seconds: int) -> LoadStats:
        return run_wrk(
            driver.wrk or "wrk",
            url,
            connections=BATCH_CONCURRENCY,
            seconds=seconds,
            timeout_s=CLIENT_TIMEOUT_S,
            script=scripts[layout],
        )

    load("v2", plan.warmup_seconds)
    for round_no in range(plan.runs):
        result.agent.append(asyncio.run(agent_rate()))
        result.v1.append(load("v1", plan.run_seconds))
        time.sleep(1)  # let the v1 queue drain
        counts = scrape(metrics_url)
        result.v2.append(load("v2", plan.run_seconds))
        after = scrape(metrics_url)
        result.batches += after["oauth3_quote_batch_size_count"] - counts.get(
            "oauth3_quote_batch_size_count", 0
        )
        result.batched += after["oauth3_quote_batch_size_sum"] - counts.get(
            "oauth3_quote_batch_size_sum", 0
        )
        step(
            f"B7 round {round_no + 1}/{plan.runs}: agent {result.agent[-1].rate(200):.1f}/s, "
            f"v1 {result.ok_rate(result.v1[-1]):,.0f}/s, v2 {result.ok_rate(result.v2[-1]):,.0f}/s"
        )
    return result


def bundle_args(base: str, dcap: Path, run_dir: Path, env: dict[str, str]) -> list[str] | str:
    """Save a bundle from the running service (once per run); the `oauth3-verify` arguments that
    verify it offline, or why there is none."""
    bundle = run_dir / "bundle.json"
    root = dcap / "root-ca.der"
    args = ["--bundle", str(bundle), "--allow-simulated", "--root-ca", str(root), "--json"]
    if bundle.exists():
        return args
    fetch_args = [base, "--allow-simulated", "--root-ca", str(root)]
    fetch_args += ["--collateral", str(dcap / "collateral.json"), "--save-bundle", str(bundle)]
    saved = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "oauth3.verifier.cli", *fetch_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if not bundle.exists():
        return f"could not save a bundle (exit {saved.returncode})"
    return args


def bench_startup(base: str, dcap: Path, run_dir: Path, env: dict[str, str], plan: Plan) -> B6:
    """B6: `oauth3-verify --bundle` and `--help` as whole processes, against bare start-up."""
    args = bundle_args(base, dcap, run_dir, env)
    if isinstance(args, str):
        return B6(error=args)
    return startup.measure(args, env, REPO, plan.startup_rounds)


def bench_verifier(base: str, dcap: Path, run_dir: Path, env: dict[str, str], plan: Plan) -> B4:
    """B4: `oauth3-verify --bundle` in-process (repeated) and as a process, plus bare start-up."""
    from oauth3.verifier.cli import run  # noqa: PLC0415 - only B4 needs the verifier

    args = bundle_args(base, dcap, run_dir, env)
    if isinstance(args, str):
        return B4(error=args)
    codes = set()
    in_process = []
    for repeat in range(plan.verify_repeats + 3):
        began = time.perf_counter()
        codes.add(run(args, io.StringIO()))
        if repeat >= 3:
            in_process.append(time.perf_counter() - began)
    process = _wall_times([sys.executable, "-m", "oauth3.verifier.cli", *args], env)
    imports = _wall_times([sys.executable, "-c", "import oauth3.verifier.cli"], env)
    interpreter = _wall_times([sys.executable, "-c", "pass"], env)
    return B4(
        exit_codes=sorted(codes),
        in_process=in_process,
        process=process,
        imports=imports,
        interpreter=interpreter,
    )


def _wall_times(command: list[str], env: dict[str, str], repeats: int = 5) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False, timeout=60)  # noqa: S603
        times.append(time.perf_counter() - began)
    return times


def peak_memory(children: list[Child]) -> Memory:
    """VmHWM (peak RSS) and VmRSS of the service and the sidecar, from /proc."""
    memory = Memory()
    for child in children:
        if child.name not in ("service", "sidecar"):
            continue
        status = Path(f"/proc/{child.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        memory.peak_kib[child.name] = int(fields["VmHWM"].split()[0])
        memory.rss_kib[child.name] = int(fields["VmRSS"].split()[0])
    return memory


def scrape(url: str) -> dict[str, float]:
    """Counters worth reporting from the metrics listener, keyed `name{labels}`."""
    wanted = (
        "oauth3_quotes_total",
        "oauth3_sidecar_queue_rejections_total",
        "oauth3_sidecar_agent_errors_total",
        "oauth3_nonce_rejections_total",
        "oauth3_sidecar_metrics_up",
        "oauth3_quote_batch_size_count",
        "oauth3_quote_batch_size_sum",
    )
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(fetch(url).decode()):
        for sample in family.samples:
            if sample.name in wanted and sample.value:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                figures[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return figures


def answered_by_route(url: str) -> dict[str, int]:
    """oauth3_requests_total summed over statuses, by route: what the service answered."""
    answered: Counter[str] = Counter()
    for family in text_string_to_metric_families(fetch(url).decode()):
        for sample in family.samples:
            if sample.name == "oauth3_requests_total":
                answered[sample.labels["route"]] += int(sample.value)
    return dict(answered)


def request_lines(log: Path) -> dict[str, int]:
    """Canonical request lines in a service log, by route (every line must be JSON)."""
    lines: Counter[str] = Counter()
    for raw in log.read_bytes().splitlines():
        line = orjson.loads(raw)
        if line.get("event") == "request":
            lines[line["route"]] += 1
    return dict(lines)


def git_commit() -> str:
    """The checked-out commit, marked dirty when tracked files differ."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - git with our own folder names
            ["git", "diff", "--quiet", "HEAD", "--", *SOURCE_FOLDERS, "bench"],  # noqa: S607
            cwd=REPO,
            check=False,
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def run_all(results: Results, driver: Driver, run_dir: Path, parts: set[str]) -> None:
    """Start the stack and the baselines, then the chosen parts in order (B5 always)."""
    plan = driver.plan
    paths = StackPaths(run_dir)
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "OAUTH3_SIM_QUOTE_LATENCY_MS": str(QUOTE_LATENCY_MS),
        "OAUTH3_CACHE_REFRESH_INTERVAL": "3600",  # keep background refreshes out of the figures
        "OAUTH3_CACHE_MAX_AGE": "7200",
        "OAUTH3_METRICS_PORT": str(metrics_port),
        "OAUTH3_LOG_LEVEL": "info",
    }
    step("starting simulator, sidecar and service")
    children = start_stack(paths, HOST, port, env)
    try:
        base = f"http://{HOST}:{port}"
        info, attestation = fetch(f"{base}/info"), fetch(f"{base}/attestation")
        (run_dir / "info.json").write_bytes(info)
        (run_dir / "attestation.json").write_bytes(attestation)
        results.body_sizes = {"/info": len(info), "/attestation": len(attestation)}
        if parts & {"B1", "B2"}:
            run_throughput(
                results,
                driver,
                service=next(c for c in children if c.name == "service"),
                run_dir=run_dir,
                paths=paths,
                env=env,
                base=base,
                info=info,
                parts=parts,
            )
        if "B3" in parts:
            step("B3 nonce path")
            digest = hashlib.sha256(info).digest()
            results.b3 = asyncio.run(bench_nonce_path(base, paths.agent_socket, digest, plan))
        results.memory = peak_memory(children)
        results.metrics = scrape(f"http://{HOST}:{metrics_port}/metrics")
        if "B4" in parts:
            step("B4 oauth3-verify --bundle")
            results.b4 = bench_verifier(base, paths.dcap_dir, run_dir, env, plan)
        if "B6" in parts:
            step("B6 oauth3-verify as a whole process")
            results.b6 = bench_startup(base, paths.dcap_dir, run_dir, env, plan)
        if "B7" in parts:
            step("B7 fresh attestations, v1 and batched")
            digest = hashlib.sha256(info).digest()
            metrics_url = f"http://{HOST}:{metrics_port}/metrics"
            results.b7 = bench_batched(driver, base, paths.agent_socket, digest, metrics_url)
        answered = answered_by_route(f"http://{HOST}:{metrics_port}/metrics")
    finally:
        stop_all(children)  # SIGTERM: the service writes its buffered lines before it exits
    if results.b3 is not None:
        results.b3.segments = trace_segments(run_dir, results.b3.traced)
    results.lines = LineCount(
        written=request_lines(run_dir / "service.log"),
        answered=answered,
        completed={
            "/info": driver.completed[f"{base}/info"],
            "/attestation": driver.completed[f"{base}/attestation"],
        },
    )


def run_throughput(
    results: Results,
    driver: Driver,
    *,
    service: Child,
    run_dir: Path,
    paths: StackPaths,
    env: dict[str, str],
    base: str,
    info: bytes,
    parts: set[str],
) -> None:
    """B1 and B2: the service against the bare, request-log-off and naive baselines."""
    bare_port, naive_port, quiet_port = free_port(), free_port(), free_port()
    bare_args = ["bench.bare", str(bare_port), str(run_dir / "info.json")]
    bare_args.append(str(run_dir / "attestation.json"))
    naive_args = ["bench.naive", str(naive_port), str(paths.agent_socket)]
    naive_args.append(str(run_dir / "info.json"))
    quiet_env = {**env, "OAUTH3_PORT": str(quiet_port), "OAUTH3_METRICS_PORT": "0"}
    quiet_env |= {"OAUTH3_LOG_LEVEL": "warning", "OAUTH3_HOST": HOST}
    quiet_env["OAUTH3_SIDECAR_SOCKET"] = str(paths.sidecar_socket)
    service_pid = service.process.pid
    with (
        started(bare_args, env, run_dir / "bare.log") as bare,
        started(naive_args, env, run_dir / "naive.log") as naive,
        started(["oauth3.service"], quiet_env, run_dir / "quiet.log") as quiet,
    ):
        bare_base, naive_base = f"http://{HOST}:{bare_port}", f"http://{HOST}:{naive_port}"
        quiet_base = f"http://{HOST}:{quiet_port}"
        wait_http(f"{bare_base}/info", bare)
        wait_http(f"{quiet_base}/readyz", quiet)
        fetch(f"{quiet_base}/attestation")  # its cached quote exists before B2
        if fetch(f"{bare_base}/info") != info:
            raise RuntimeError("the bare baseline does not serve the same /info bytes")
        if "B1" in parts:
            step("B1 GET /info")
            results.b1 = driver.compare(
                "B1",
                {
                    "bare aiohttp": (f"{bare_base}/info", bare.pid),
                    "oauth3 service": (f"{base}/info", service_pid),
                    "service, request log off": (f"{quiet_base}/info", quiet.pid),
                },
            )
        if "B2" in parts:
            step("B2 cached GET /attestation")
            results.b2 = driver.compare(
                "B2",
                {
                    "bare aiohttp": (f"{bare_base}/attestation", bare.pid),
                    "oauth3 service": (f"{base}/attestation", service_pid),
                    "service, request log off": (f"{quiet_base}/attestation", quiet.pid),
                    "naive (quote per request)": (f"{naive_base}/attestation", naive.pid),
                },
            )
        targets = []
        if "B1" in parts:
            targets += [
                ("bare aiohttp `/info`", f"{bare_base}/info", bare.pid),
                ("service `/info`", f"{base}/info", service_pid),
            ]
        if "B2" in parts:
            targets.append(("service cached `/attestation`", f"{base}/attestation", service_pid))
        profile_targets(results, driver, run_dir, targets)


def profile_targets(
    results: Results, driver: Driver, run_dir: Path, targets: list[tuple[str, str, int]]
) -> None:
    """Load each (label, url, server pid) once more while py-spy samples that server."""
    spy = py_spy()
    if spy is None:
        results.profile_note = "Not profiled: py-spy is missing (the test extra installs it)."
        return
    seconds = driver.plan.run_seconds
    for number, (label, url, pid) in enumerate(targets):
        output = run_dir / f"profile-{number}.txt"
        recorder = start_recording(spy, pid, seconds + 1, output)
        time.sleep(0.5)  # py-spy attaches before the load starts
        stats = driver.load(url, seconds, pid)
        _, stderr = recorder.communicate(timeout=seconds + 30)
        if recorder.returncode != 0 or not output.exists():
            results.profile_note = f"Not profiled: py-spy failed: {stderr.decode()[-300:]}"
            results.profiles.clear()
            return
        results.profiles.append(ProfiledRun(label, summarise(output.read_text()), stats))
        step(f"profiled {label}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of `python -m bench`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Start simulator, sidecar and service as `make run` does, measure them against "
            "baselines started in the same run (bare aiohttp, a naive quote-per-request "
            "service, the agent itself) and write the report. A full run takes about 200 s "
            "and writes BENCHMARKS.md."
        ),
        epilog=(
            "B1 GET /info throughput, B2 cached GET /attestation throughput, B3 the nonce "
            "path (added latency, throughput, overload), B4 oauth3-verify --bundle, B6 "
            "oauth3-verify --bundle and --help as whole processes against bare python, B7 fresh "
            "attestations batched (oauth3/v2) against one quote per client; B5 "
            "(memory) is read after B1-B3. Loads go to 127.0.0.1 only. wrk is used "
            "when installed (installed with apt-get when running as root), else an aiohttp "
            "client."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"a first look: {QUICK.runs} run of {QUICK.run_seconds} s per target after "
            f"{QUICK.warmup_seconds} s of warm-up, {QUICK.latency_pairs} B3 latency pairs "
            "(about 40 s); the report goes to stdout unless --output is given"
        ),
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        metavar="PART",
        help=f"run only this part ({', '.join(PARTS)}); repeat for several",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help=(
            "where to write the report, '-' for stdout (default: BENCHMARKS.md for a full "
            "run of every part, stdout otherwise, so BENCHMARKS.md only ever holds full runs)"
        ),
    )
    parser.add_argument(
        "--note",
        default="",
        help="what else the machine was doing, written into the report's header",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench` (`make bench`)."""
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    parts = set(args.only or PARTS)
    full_run = not args.quick and parts == set(PARTS)
    output = args.output or ("BENCHMARKS.md" if full_run else "-")
    began = time.monotonic()
    wrk, how = ensure_wrk()
    results = Results(
        machine=machine_facts(),
        commit=git_commit(),
        note=args.note,
        load_generator=(
            f"{wrk_version(wrk)} ({how}), 1 thread" if wrk else f"aiohttp fallback ({how})"
        ),
    )
    step(f"load generator: {results.load_generator}")
    run_dir = Path(tempfile.mkdtemp(prefix="o3b", dir="/tmp"))
    try:
        run_all(results, Driver(wrk, plan), run_dir, parts)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"bench: failed: {exc}; logs in {run_dir}\n")
        raise SystemExit(1) from None
    results.settings = {
        "mode": "quick (a first look, not for BENCHMARKS.md)" if args.quick else "full",
        "parts": ", ".join(sorted(parts)),
        "runs per figure": plan.runs,
        "run length": f"{plan.run_seconds} s (after a {plan.warmup_seconds} s warm-up per target)",
        "connections (B1, B2)": CONNECTIONS,
        "client timeout": f"{CLIENT_TIMEOUT_S} s",
        "simulator quote latency": f"{QUOTE_LATENCY_MS} ms, serialised",
        "B3 latency": (
            f"{plan.runs} x {plan.latency_pairs} sequential pairs (direct agent call, service)"
        ),
        "B3 throughput concurrency": NONCE_CONCURRENCY,
        "B3 overload concurrency": f"{OVERLOAD_CONCURRENCY} (sidecar queue bound 16 + 1 quoting)",
        "B4 in-process repeats": plan.verify_repeats,
        "B6 rounds (bare, --help, --bundle interleaved)": plan.startup_rounds,
        "B7 concurrency": f"{BATCH_CONCURRENCY} (wrk, a fresh random nonce per request)",
    }
    results.wall_seconds = time.monotonic() - began
    report = render(results)
    if output == "-":
        sys.stdout.write(report)
    else:
        (REPO / output if not Path(output).is_absolute() else Path(output)).write_text(report)
    shutil.rmtree(run_dir, ignore_errors=True)
    step(f"wrote {'the report' if output == '-' else output} in {results.wall_seconds:.0f} s")


if __name__ == "__main__":
    main()
