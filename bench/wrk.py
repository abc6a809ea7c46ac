"""wrk: installed from Debian when missing, run with a Lua reporter that prints one JSON line."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

REPORTER = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def nonce_requests(path: str, layout: str | None) -> str:
    """A wrk Lua `request` function: GET path?nonce=<fresh random 64 hex>[&layout=…] each time."""
    suffix = f'.. "&layout={layout}"' if layout else ""
    return f"""
local hex = "0123456789abcdef"
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function()
  local digits = {{}}
  for i = 1, 64 do
    local n = math.random(16)
    digits[i] = hex:sub(n, n)
  end
  return wrk.format("GET", "{path}?nonce=" .. table.concat(digits) {suffix})
end
"""


@dataclass(frozen=True, slots=True)
class LoadStats:
    """One load run: requests per second, latency percentiles and every kind of failure."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    timeouts: int
    errors: int
    server_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float | None:
        """CPU time (user + system) the server process spent per completed request, in µs."""
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s / self.requests * 1e6


def _apt(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", *args]
    done = subprocess.run(command, env=env, capture_output=True, check=False, timeout=300)  # noqa: S603
    return done.returncode == 0


def ensure_wrk() -> tuple[str | None, str]:
    """wrk's path (installing Debian's package as root when missing) and how it was found."""
    found = shutil.which("wrk")
    if found:
        return found, "already installed"
    if os.geteuid() != 0:
        return None, "wrk missing and not root: cannot apt-get install it"
    if not _apt("install", "-y", "-q", "wrk"):
        _apt("update", "-q")
        _apt("install", "-y", "-q", "wrk")
    found = shutil.which("wrk")
    return (found, "installed with apt-get") if found else (None, "apt-get install wrk failed")


def wrk_version(wrk: str) -> str:
    """The first line wrk prints about itself."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    return (
        (done.stdout or done.stderr).splitlines()[0].strip() if done.stdout or done.stderr else ""
    )


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: int,
    threads: int = 1,
    timeout_s: int = 10,
    script: str = "",
) -> LoadStats:
    """Run wrk against `url` for `seconds` with a fixed connection count (and `script`, Lua run
    before the reporter, e.g. `nonce_requests`); parse its JSON line."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script + REPORTER)
    try:
        done = subprocess.run(  # noqa: S603
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                f"--timeout={timeout_s}s",
                "-s",
                lua.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + timeout_s + 30,
        )
    finally:
        Path(lua.name).unlink(missing_ok=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    doc = orjson.loads(line.removeprefix("BENCH "))
    return LoadStats(
        requests=doc["requests"],
        seconds=doc["duration_us"] / 1e6,
        p50_ms=doc["p50_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000,
        non_2xx=doc["status"],
        timeouts=doc["timeout"],
        errors=doc["connect"] + doc["read"] + doc["write"],
    )
