"""`oauth3-inspect` as a user runs it: a real process, every accepted input shape, bad input."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

INSPECT = [sys.executable, "-m", "oauth3.verifier.inspect_cli"]


def run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*INSPECT, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_getquote_response(vectors: Path) -> None:
    result = run([str(vectors / "dstack-head/verifier-fixtures/quote-report.json")])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["quote"]["version"] == 4
    assert out["quote"]["tee_type"] == "TDX"
    assert out["quote"]["report_data"].startswith("1234")
    assert len(out["quote"]["rtmr"]) == 4
    assert out["event_log"]["events"] == 28
    assert out["event_log"]["rtmr_match"] == [True] * 4
    assert out["event_log"]["replayed_rtmr"] == out["quote"]["rtmr"]
    assert out["event_log"]["app_id"] == "3763bc34552cf3a27ff71ad5f7a90471562a1a2d"
    assert out["event_log"]["compose_hash"].startswith(out["event_log"]["app_id"])
    assert out["event_log"]["instance_id"]


def test_tappd_response(vectors: Path) -> None:
    result = run([str(vectors / "dstack-examples/rtmr3-based/report.json")])
    out = json.loads(result.stdout)
    assert out["kind"] == "tappd-quote"
    assert out["event_log"]["compose_hash"].startswith("06768e6d")


def test_raw_binary_from_stdin(vectors: Path) -> None:
    raw = (vectors / "dcap-qvl/sample/tdx_quote_outdated").read_bytes()
    out = json.loads(run(["-"], stdin=raw).stdout)
    assert out["kind"] == "raw-quote"
    assert out["quote"]["version"] == 5
    assert out["event_log"] is None


@pytest.mark.parametrize("prefix", ["", "0x"])
def test_hex_text(vectors: Path, tmp_path: Path, prefix: str) -> None:
    text = (vectors / "dstack-v0.5.4-simulator/quote.hex").read_text()
    path = tmp_path / "q.hex"
    path.write_text(prefix + text)
    log = vectors / "dstack-v0.5.4-simulator/eventlog.json"
    out = json.loads(run([str(path), "--event-log", str(log)]).stdout)
    assert out["kind"] == "hex-quote"
    assert out["quote"]["mr_td"].startswith("c68518a0")
    assert out["event_log"]["rtmr_match"] == [True] * 4


def test_oauth3_attestation_response(vectors: Path, tmp_path: Path) -> None:
    doc = json.loads((vectors / "dstack-head/verifier-fixtures/quote-report.json").read_text())
    response = {
        "quote": base64.b64encode(bytes.fromhex(doc["quote"])).decode(),
        "eventLog": doc["event_log"],
        "reportData": doc["report_data"],
        "nonce": None,
    }
    path = tmp_path / "att.json"
    path.write_text(json.dumps(response))
    out = json.loads(run([str(path)]).stdout)
    assert out["kind"] == "oauth3-attestation"
    assert out["declared_report_data_matches"] is True
    assert out["event_log"]["rtmr_match"] == [True] * 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "input is empty"),
        (b"hello", "not valid hex"),
        (b"{not json", "does not parse"),
        (b'{"x": 1}', "no 'quote' field"),
        (b"\xff\xfe\x00", "neither a binary TDX quote nor UTF-8"),
        (b"0400", "malformed quote"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    result = run([str(path)])
    assert result.returncode == 2
    err = result.stderr.decode()
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_file_exit_2(tmp_path: Path) -> None:
    result = run([str(tmp_path / "absent")])
    assert result.returncode == 2
    assert "cannot read" in result.stderr.decode()
