"""Logs as data: JSON lines, no secret ever, tracebacks without local variables; and the
service holds no path to the dstack socket."""

from __future__ import annotations

import ast
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
import structlog

from oauth3.runtime.logs import (
    REDACTED,
    configure_logging,
    log_request,
    request_id_var,
    reset_logging,
    secrets_from_env,
)
from tests.stack import running_stack

PLANTED = "planted-s3cret-8f1e2d"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def json_log() -> Iterator[io.BytesIO]:
    stream = io.BytesIO()
    configure_logging("debug", secrets=[PLANTED], stream=stream)  # type: ignore[arg-type]
    yield stream
    reset_logging()


def lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_secret_values_and_secret_keys_are_redacted(json_log: io.BytesIO) -> None:
    log = structlog.get_logger("t")
    log.info("event", detail=f"token is {PLANTED}", nested={"a": [PLANTED]}, api_token="x1234")
    (line,) = lines(json_log)
    assert PLANTED.encode() not in json_log.getvalue()
    assert line["detail"] == f"token is {REDACTED}"
    assert line["nested"] == {"a": [REDACTED]}
    assert line["api_token"] == REDACTED


@pytest.mark.parametrize(
    "extra",
    [
        {"note": "plain"},
        {"note": f"token is {PLANTED}"},
        {"api_token": "x1234"},
        {"nested": {"a": [PLANTED], "password": "x"}},
        {"refused": "/{tail:.*}", "items": [1, "two"]},
        {"odd": b"bytes", "when": 1.5e300},
    ],
    ids=["clean", "secret-in-a-value", "secret-named-key", "nested", "brackets", "odd-types"],
)
def test_request_line_is_the_structlog_line_and_as_redacted(
    json_log: io.BytesIO, extra: dict[str, object]
) -> None:
    fields = {
        "request_id": f"id-{PLANTED}",
        "method": "GET",
        "route": "/info",
        "status": 200,
        "duration_ms": 0.25,
        **extra,
    }
    for _ in range(2):  # the second time, every key is known to be harmless or not
        log_request(structlog.get_logger("t"), dict(fields))
    structlog.get_logger("t").info("request", **fields)
    first, fast, slow = lines(json_log)
    assert first.pop("timestamp") <= fast["timestamp"]
    assert first == {k: v for k, v in fast.items() if k != "timestamp"}
    assert PLANTED.encode() not in json_log.getvalue()
    assert fast.pop("timestamp") <= slow.pop("timestamp")
    assert list(fast.items()) == list(slow.items())
    assert fast["request_id"] == f"id-{REDACTED}"
    assert fast["event"] == "request"
    assert fast["level"] == "info"


def test_no_request_line_below_info(json_log: io.BytesIO) -> None:
    configure_logging("warning", secrets=[PLANTED], stream=json_log)  # type: ignore[arg-type]
    log_request(structlog.get_logger("t"), {"request_id": "r", "status": 200})
    assert json_log.getvalue() == b""


def test_lines_logged_during_a_request_carry_its_id(json_log: io.BytesIO) -> None:
    token = request_id_var.set("req-42")
    try:
        structlog.get_logger("t").warning("agent_error", status=502)
    finally:
        request_id_var.reset(token)
    structlog.get_logger("t").warning("after")
    inside, after = lines(json_log)
    assert inside["request_id"] == "req-42"
    assert "request_id" not in after


def test_tracebacks_carry_no_locals(json_log: io.BytesIO) -> None:
    log = structlog.get_logger("t")

    def fail_with_a_secret_local() -> None:
        credential = PLANTED  # noqa: F841 - a local variable that must never be logged
        raise RuntimeError(f"failed with {PLANTED}")

    try:
        fail_with_a_secret_local()
    except RuntimeError:
        log.exception("boom")
    raw = json_log.getvalue()
    assert PLANTED.encode() not in raw
    assert b'"locals"' not in raw
    (line,) = lines(json_log)
    assert line["exception"]  # the traceback itself is there


def test_secret_env_names() -> None:
    env = {"OAUTH3_API_TOKEN": "abcd", "DB_PASSWORD": "efgh", "OAUTH3_PORT": "8080", "X_KEY": "k"}
    assert sorted(secrets_from_env(env)) == ["abcd", "efgh"]


def test_no_planted_secret_reaches_any_process_log() -> None:
    with running_stack(OAUTH3_TEST_API_TOKEN=PLANTED, OAUTH3_LOG_LEVEL="debug") as stack:
        for path, headers in [
            ("/info", {"X-Request-ID": PLANTED}),
            (f"/attestation?nonce={PLANTED}", {}),
            (f"/{PLANTED}", {"X-Request-ID": PLANTED}),
            ("/attestation", {"X-Request-ID": PLANTED}),
        ]:
            requests.get(f"{stack.base_url}{path}", headers=headers, timeout=10)
        logs = [child.log_path for child in stack.children]
    for path in logs:
        text = path.read_bytes()
        assert text, path
        assert PLANTED.encode() not in text, path


def _imports_and_strings(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    imports: set[str] = set()
    strings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
    return imports, strings


def test_service_code_never_reaches_the_dstack_socket() -> None:
    service_files = sorted((REPO / "service" / "src" / "oauth3" / "service").glob("*.py"))
    assert service_files
    for path in service_files:
        imports, strings = _imports_and_strings(path)
        foreign = ("oauth3.sidecar", "oauth3.simulator")
        assert not any(i.startswith(foreign) for i in imports), (path, imports)
        assert not any("dstack" in s.lower() and ".sock" in s for s in strings), path
        assert "DSTACK_SIMULATOR_ENDPOINT" not in strings, path
        assert "OAUTH3_SIDECAR_AGENT_SOCKET" not in strings, path


def unix_connections() -> list[tuple[str, str, str, str]]:
    """(local path, local inode, peer inode, users) of every connected unix stream socket."""
    out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True, timeout=10)
    rows = []
    for line in out.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "u_str" and fields[1] == "ESTAB":
            rows.append((fields[4], fields[5], fields[7], " ".join(fields[8:])))
    return rows


def test_service_process_has_no_dstack_socket_open() -> None:
    with running_stack() as stack:
        requests.get(f"{stack.base_url}/attestation?nonce={'ab' * 32}", timeout=10)
        pid = stack.child("service").process.pid
        rows = unix_connections()
        service_inodes = {local for _, local, _, users in rows if f"pid={pid}," in users}
        peers_of = {
            path: {peer for p, _, peer, _ in rows if p == path}
            for path in (str(stack.paths.sidecar_socket), str(stack.paths.agent_socket))
        }
    # the method sees the service's connection to the sidecar (so it can see one to the agent)
    assert service_inodes & peers_of[str(stack.paths.sidecar_socket)]
    assert peers_of[str(stack.paths.agent_socket)], "the sidecar holds the agent socket"
    assert not service_inodes & peers_of[str(stack.paths.agent_socket)]
