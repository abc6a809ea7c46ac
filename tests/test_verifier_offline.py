"""`oauth3-verify` offline on recorded Intel-signed quotes: pinned time, tampering, exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from oauth3.attestation import dump_event_log, parse_event_log, stripped
from oauth3.verifier import intel_checks
from oauth3.verifier.cli import run
from oauth3.verifier.collateral import load_collateral
from oauth3.verifier.policy import Policy
from oauth3.verifier.steps import Evidence, VerifyOptions, run_steps
from oauth3.verifier.verdict import EXIT_CODES, Step
from tests.verifycli import pins_for

REPORT = "dstack-head/verifier-fixtures/quote-report.json"
OUTDATED_COLLATERAL = "dcap-qvl/sample/tdx_quote_outdated_collateral.json"
INSIDE = "2026-03-20T10:41:14Z"  # PROVENANCE: window [2026-02-18T10:58:51Z, 2026-03-20T10:41:15Z]
AFTER = "2026-03-20T10:41:16Z"
BEFORE = "2026-02-18T10:58:50Z"
COMPOSE_HASH = "3763bc34552cf3a27ff71ad5f7a90471562a1a2df552dfc1998cba2d60da27e7"
APP_ID = "3763bc34552cf3a27ff71ad5f7a90471562a1a2d"
REPORT_DATA_OFFSET = 568


def verify_json(args: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = run([*args, "--json"], out)
    return code, json.loads(out.getvalue())


def step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in doc["steps"] if s["name"] == name)
    return found


def report_quote(vectors: Path) -> bytes:
    return bytes.fromhex(json.loads((vectors / REPORT).read_text())["quote"])


def report_args(
    vectors: Path, quote_file: Path | None = None, at: str = INSIDE, pinned: bool = True
) -> list[str]:
    """Check the real 0.5.x quote at a time its collateral covers, pinned to its own app and
    platform (what a relying party would have pinned for that deployment)."""
    pins = pins_for(report_quote(vectors), COMPOSE_HASH) if pinned else []
    return [
        "--dstack-quote",
        str(quote_file or vectors / REPORT),
        "--collateral",
        str(vectors / OUTDATED_COLLATERAL),
        "--at",
        at,
        *pins,
    ]


def write_report(tmp_path: Path, vectors: Path, **changes: Any) -> Path:
    doc = json.loads((vectors / REPORT).read_text())
    doc.update(changes)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc))
    return path


def test_real_quote_inside_window_passes_every_check_but_freshness(vectors: Path) -> None:
    code, doc = verify_json(report_args(vectors))
    # a bare quote carries no nonce of ours: everything holds, and it says so with exit 5
    assert (code, doc["verdict"]) == (5, "NOT_FRESH")
    assert [s["name"] for s in doc["steps"]] == [str(s) for s in Step]
    hardware = step(doc, "hardware")
    assert hardware["ok"] is True
    assert hardware["details"]["status"] == "UpToDate"
    assert hardware["details"]["advisory_ids"] == []
    window = hardware["details"]["collateral_window"]
    assert (window["valid_from"], window["valid_until"]) == (
        "2026-02-18T10:58:51Z",
        "2026-03-20T10:41:15Z",
    )
    for name in ("quote", "simulated", "tcb_policy", "platform", "event_log", "compose"):
        assert step(doc, name)["ok"] is True, step(doc, name)
    assert step(doc, "simulated")["details"]["intel_root"] is True
    assert step(doc, "info_binding")["outcome"] == "not_applicable"
    assert step(doc, "nonce")["outcome"] == "not_fresh"
    assert doc["gaps"] == [f"nonce: {step(doc, 'nonce')['reason']}"]
    assert doc["report_data"] == "1234" + "00" * 62
    assert doc["tcb_status"] == "UpToDate"
    assert doc["compose_hash"] == COMPOSE_HASH
    assert doc["app_id"] == APP_ID
    assert doc["collateral"]["tcb_evaluation_data_number"] == 18
    assert doc["collateral"]["quote_sha256"] == hashlib.sha256(report_quote(vectors)).hexdigest()
    events = step(doc, "event_log")["details"]
    assert events["app_events"] == [
        {"event": "LIUM_MINER_HOTKEY", "payload": events["app_events"][0]["payload"]}
    ]


def test_without_expectations_it_is_unpinned_never_zero(vectors: Path) -> None:
    code, doc = verify_json(report_args(vectors, pinned=False))
    assert (code, doc["verdict"]) == (3, "UNPINNED")
    assert step(doc, "compose")["outcome"] == "unpinned"
    assert step(doc, "platform")["outcome"] == "unpinned"
    assert "nothing pins" in step(doc, "compose")["reason"]
    assert step(doc, "hardware")["ok"] is True


def test_unix_seconds_are_accepted_for_at(vectors: Path) -> None:
    args = report_args(vectors)
    args[args.index(INSIDE)] = "1774003274"
    code, doc = verify_json(args)
    assert code == 5
    assert doc["checked_at"] == INSIDE


@pytest.mark.parametrize("at", [AFTER, BEFORE, "2030-01-01T00:00:00+02:00"])
def test_real_quote_outside_window_fails_hardware(vectors: Path, at: str) -> None:
    code, doc = verify_json(report_args(vectors, at=at))
    assert code == EXIT_CODES[Step.HARDWARE] == 11
    assert doc["verdict"] == "FAILED"
    assert step(doc, "hardware")["ok"] is False
    assert step(doc, "tcb_policy")["ok"] is False
    assert step(doc, "event_log")["ok"] is True


def test_dcap_sample_quote_at_pinned_time(vectors: Path) -> None:
    args = [
        "--dstack-quote",
        str(vectors / "dcap-qvl/sample/tdx_quote"),
        "--collateral",
        str(vectors / "dcap-qvl/sample/tdx_quote_collateral.json"),
        "--at",
        "2025-07-01T12:00:00Z",
    ]
    code, doc = verify_json(args)
    hardware = step(doc, "hardware")
    assert hardware["ok"] is True
    assert hardware["details"]["status"] == "UpToDate"
    assert step(doc, "tcb_policy")["ok"] is True
    assert doc["report_data"].startswith("9a9d48e7")
    # a bare raw quote has no event log: the code is unchecked, so the verdict is not a pass
    assert step(doc, "event_log")["ok"] is False
    assert "no event log" in step(doc, "event_log")["reason"]
    assert code == EXIT_CODES[Step.EVENT_LOG]


def test_flipped_report_data_byte_fails_hardware(vectors: Path, tmp_path: Path) -> None:
    quote = bytearray.fromhex(json.loads((vectors / REPORT).read_text())["quote"])
    quote[REPORT_DATA_OFFSET + 5] ^= 0x01
    path = write_report(tmp_path, vectors, quote=quote.hex())
    code, doc = verify_json(report_args(vectors, path))
    assert code == 11
    assert "signature is invalid" in step(doc, "hardware")["reason"]
    assert step(doc, "quote")["ok"] is True


def _rtmr3_edit(events: list[dict[str, Any]], keep_digest: bool) -> list[dict[str, Any]]:
    target = next(e for e in events if e["imr"] == 3 and e["event"] == "compose-hash")
    payload = bytearray.fromhex(target["event_payload"])
    payload[0] ^= 0xFF
    target["event_payload"] = payload.hex()
    if not keep_digest:
        target["digest"] = ""
    return events


@pytest.mark.parametrize(
    ("keep_digest", "named"),
    [(True, "'compose-hash'"), (False, "RTMR3")],
)
def test_edited_rtmr3_payload_fails_event_log(
    vectors: Path, tmp_path: Path, keep_digest: bool, named: str
) -> None:
    doc = json.loads((vectors / REPORT).read_text())
    events = _rtmr3_edit(json.loads(doc["event_log"]), keep_digest)
    path = write_report(tmp_path, vectors, event_log=json.dumps(events))
    code, out = verify_json(report_args(vectors, path))
    assert code == 15
    assert named in step(out, "event_log")["reason"]
    assert step(out, "hardware")["ok"] is True
    assert step(out, "compose")["ok"] is False


def test_swapped_events_fail_event_log(vectors: Path, tmp_path: Path) -> None:
    doc = json.loads((vectors / REPORT).read_text())
    events = json.loads(doc["event_log"])
    rtmr3 = [i for i, e in enumerate(events) if e["imr"] == 3]
    first, second = rtmr3[1], rtmr3[2]
    events[first], events[second] = events[second], events[first]
    path = write_report(tmp_path, vectors, event_log=json.dumps(events))
    code, out = verify_json(report_args(vectors, path))
    assert code == 15
    reason = step(out, "event_log")["reason"]
    assert "RTMR3" in reason
    assert step(out, "event_log")["details"]["mismatched"] == ["RTMR3"]


def test_stripped_event_log_is_accepted(vectors: Path, tmp_path: Path) -> None:
    doc = json.loads((vectors / REPORT).read_text())
    light = dump_event_log(stripped(parse_event_log(doc["event_log"])))
    assert light != doc["event_log"]
    path = write_report(tmp_path, vectors, event_log=light)
    code, out = verify_json(report_args(vectors, path))
    assert code == 5, out
    assert step(out, "event_log")["ok"] is True
    assert out["compose_hash"] == COMPOSE_HASH


def test_expected_compose_hash_and_app_id(vectors: Path) -> None:
    code, doc = verify_json([*report_args(vectors), "--expect-app-id", APP_ID])
    assert code == 5
    assert step(doc, "compose")["ok"] is True
    assert "app id pinned" in step(doc, "compose")["reason"]
    unpinned = report_args(vectors, pinned=False)
    code, doc = verify_json([*unpinned, "--expect-compose-hash", "00" * 32])
    assert code == 16
    assert doc["verdict"] == "FAILED"
    assert "not one you pinned" in step(doc, "compose")["reason"]
    code, doc = verify_json([*report_args(vectors), "--expect-app-id", "ab" * 20])
    assert code == 16
    assert "app id" in step(doc, "compose")["reason"]


def test_tcb_policy_rejects_what_is_not_allowed(vectors: Path) -> None:
    collateral = load_collateral((vectors / OUTDATED_COLLATERAL).read_bytes())
    quote = bytes.fromhex(json.loads((vectors / REPORT).read_text())["quote"])
    doc = json.loads((vectors / REPORT).read_text())
    evidence = Evidence(quote=quote, event_log=doc["event_log"])
    at = 1774003274
    nothing = VerifyOptions(at=at, policy=Policy(allowed_tcb=frozenset()))
    strict = run_steps(evidence, nothing, collateral)
    assert strict.exit_code == 12
    assert strict.first_failure is not None
    assert strict.first_failure.name is Step.TCB_POLICY
    assert run_steps(evidence, VerifyOptions(at=at), collateral).tcb_status == "UpToDate"
    assert step(run_steps(evidence, VerifyOptions(at=at), collateral).as_json(), "tcb_policy")["ok"]


def test_skip_dcap_is_partial_and_never_zero(vectors: Path) -> None:
    args = [*report_args(vectors), "--skip-dcap"]
    out = io.StringIO()
    assert run(args, out) == 4
    text = out.getvalue()
    assert "PARTIAL (exit 4)" in text
    assert "VERIFIED" not in text
    assert "NOT CHECKED" in text
    code, doc = verify_json(args)
    assert (code, doc["verdict"], doc["hardware_checked"]) == (4, "PARTIAL", False)
    assert step(doc, "hardware")["outcome"] == "skipped"


def test_garbage_quote_fails_every_step(tmp_path: Path) -> None:
    path = tmp_path / "q.hex"
    path.write_text("04000200810000000000")
    code, doc = verify_json(["--dstack-quote", str(path), "--skip-dcap"])
    assert code == 10
    assert step(doc, "quote")["ok"] is False
    assert all(s["ok"] is not True for s in doc["steps"])


def test_any_exception_in_a_step_is_a_failure(
    vectors: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(dcap_qvl, "verify", explode)
    code, doc = verify_json(report_args(vectors))
    assert code == 11
    assert "boom" in step(doc, "hardware")["reason"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["http://127.0.0.1:9", "--bundle", "x.json"],
        ["--dstack-quote", "q", "--root-ca", "root.der"],
        ["--dstack-quote", "q", "--at", "yesterday"],
        ["--dstack-quote", "q", "--allow-tcb", "Fine"],
        ["--dstack-quote", "q", "--expect-compose-hash", "abcd"],
        ["--dstack-quote", "q", "--nonce", "none"],
        ["http://127.0.0.1:9", "--nonce", "00" * 32],
        ["--dstack-quote", "/nonexistent/quote"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(args, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("oauth3-verify")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_no_verification_and_exits_2(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert run([flag], out) == 2  # a URL argument that is really "--help" never reads as yes
    assert "exit codes: 0 VERIFIED" in capsys.readouterr().out
    assert run(["https://x.example", flag, "--json"], out := io.StringIO()) == 2
    assert json.loads(out.getvalue()) == {"verdict": "ERROR", "exit_code": 2}
    assert "usage: oauth3-verify" in capsys.readouterr().err  # stdout holds only the JSON


@pytest.mark.parametrize("injected", ["--he", "--allow-sim", "--skip"])
def test_options_are_never_abbreviated(injected: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert run([injected, "--json"], out) == 2
    assert json.loads(out.getvalue())["verdict"] == "ERROR"
    assert f"unrecognized arguments: {injected}" in capsys.readouterr().err


def test_malformed_collateral_is_an_io_error(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"tcb_info": 1}')
    args = ["--dstack-quote", str(vectors / REPORT), "--collateral", str(bad)]
    assert run(args, io.StringIO()) == 2
    assert "QuoteCollateralV3" in capsys.readouterr().err


def test_console_script_exit_codes(vectors: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "oauth3.verifier.cli"]
    ok = subprocess.run(
        [*command, *report_args(vectors)], capture_output=True, timeout=60, check=False
    )
    assert ok.returncode == 5, ok.stderr
    assert ok.stdout.decode().splitlines()[-1].startswith("NOT_FRESH (exit 5)")
    late = subprocess.run(
        [*command, *report_args(vectors, at=AFTER)], capture_output=True, timeout=60, check=False
    )
    assert late.returncode == 11
    assert b"FAILED at hardware (exit 11)" in late.stdout
    assert late.stderr == b""
    broken = tmp_path / "b.json"
    broken.write_text("{")
    usage = subprocess.run(
        [*command, "--bundle", str(broken)], capture_output=True, timeout=60, check=False
    )
    assert usage.returncode == 2
    assert b"Traceback" not in usage.stderr
    assert usage.stderr.count(b"\n") == 1


def test_simulated_classification(vectors: Path) -> None:
    intel_der = (vectors / "dcap-qvl/TrustedRootCA.der").read_bytes()

    def chain(der: bytes, *, self_signed: bool, names_simulator: bool) -> intel_checks.ChainFacts:
        return intel_checks.ChainFacts(("CN=x",), der, self_signed, names_simulator)

    plain = VerifyOptions(at=0)
    pinned = VerifyOptions(at=0, allow_simulated=True, root_ca_der=b"root")
    intel = chain(intel_der, self_signed=True, names_simulator=False)
    assert intel.intel_rooted
    other_root = chain(b"another root", self_signed=True, names_simulator=False)
    no_root = chain(b"an intermediate", self_signed=False, names_simulator=False)
    named = chain(intel_der, self_signed=True, names_simulator=True)
    assert not intel_checks.is_simulated(intel, plain)
    assert not intel_checks.is_simulated(intel, pinned)
    assert intel_checks.is_simulated(other_root, plain)
    assert intel_checks.is_simulated(named, plain)
    # a chain that stops below its root is judged by the DCAP check against Intel's root,
    # unless the pinned root is what verifies it
    assert not intel_checks.is_simulated(no_root, plain)
    assert intel_checks.is_simulated(no_root, pinned)


def test_pinned_root_is_never_used_for_intel_quotes(vectors: Path) -> None:
    pinned = ["--allow-simulated", "--root-ca", str(vectors / "dcap-qvl/TrustedRootCA.der")]
    code, doc = verify_json([*report_args(vectors), *pinned])
    assert (code, doc["verdict"], doc["simulated"]) == (5, "NOT_FRESH", False)
    assert step(doc, "hardware")["details"]["root"] == "Intel SGX Root CA"


def test_collateral_older_than_the_minimum_tcb_evaluation_fails(vectors: Path) -> None:
    code, doc = verify_json([*report_args(vectors), "--min-tcb-evaluation", "19"])
    assert code == 12
    assert "TCB evaluation 18, older than the minimum 19" in step(doc, "tcb_policy")["reason"]
    code, doc = verify_json([*report_args(vectors), "--min-tcb-evaluation", "18"])
    assert code == 5
    assert step(doc, "tcb_policy")["details"]["tcb_evaluation_data_number"] == 18
