"""oauth3-phala check at dstack HEAD: its schema and defaults, strict JSON, Phala's official
pre-launch scripts, login material; and a bounded fuzz of check's inputs."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauth3.phala.check import compare, strict_json
from oauth3.phala.cli import run
from oauth3.phala.deploy import DeployPlan, DeployRefused, check_provision, compose_to_send
from oauth3.phala.manifest import ManifestError, canonical_json, render
from tests.phala_fake import PRODUCTION_IMAGE

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "phala-app.yaml"
PRELAUNCH = Path(__file__).parent / "vectors/dstack-examples/phala-cloud-prelaunch-script-v0.0.19"
DOCUMENTED_CHECK_EXITS = {0, 1, 2}


def ours() -> dict[str, Any]:
    """The rendered manifest as a JSON object."""
    document: dict[str, Any] = orjson.loads(render(MANIFEST.read_bytes()).app_compose)
    return document


def check(tmp_path: Path, deployed: bytes, *extra: str) -> tuple[int, str, str]:
    """oauth3-phala check in-process on a saved deployed compose; (code, stdout, stderr)."""
    path = tmp_path / "deployed.json"
    path.write_bytes(deployed)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(["check", str(MANIFEST), str(path), *extra])
    return code, out.getvalue(), err.getvalue()


HEAD_MANIFEST = """\
manifest_version: "3"
name: head
runner: nerdctl-compose
snapshotter: stargz
docker_compose_file: "services: {a: {image: 'r/a@sha256:ABAB'}}"
key_provider: tpm
secure_time: true
swap_size: 2G
requirements:
  os_version: ">=0.6.0"
  platforms: [tdx]
  launch_token_hash: "CDCD"
port_policy:
  ports: [{port: 8080, pp: true}]
  restrict_mode: true
verity_volumes:
  - {source: data.img, verity_root: "EFEF", target: /data}
"""
HEAD_MANIFEST = (
    HEAD_MANIFEST.replace("ABAB", "ab" * 32).replace("CDCD", "cd" * 32).replace("EFEF", "ef" * 32)
)


def test_dstack_head_manifests_render_and_check_against_themselves(tmp_path: Path) -> None:
    rendered = render(HEAD_MANIFEST.encode())
    document = orjson.loads(rendered.app_compose)
    assert document["manifest_version"] == "3"
    report = compare(rendered, rendered.app_compose)
    assert report.differences == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("manifest_version: 3", "a number only for 1 and 2"),
        ('manifest_version: "03"', "canonical string"),
        ("snapshotter: zfs", "snapshotter"),
        ("runner: docker-compose", "only for runner nerdctl-compose"),
        ("port_policy: {ports: [{port: 70000}]}", "port"),
        ("requirements: {os_versions: x}", "unknown key"),
        ("verity_volumes: [{source: a, verity_root: '00', target: /x}]", "verity_root"),
    ],
)
def test_head_schema_breaches_are_refused(change: str, message: str) -> None:
    document = {**yaml.safe_load(HEAD_MANIFEST), **yaml.safe_load(change)}
    with pytest.raises(ManifestError, match=message):
        render(yaml.safe_dump(document).encode())


def test_absent_secure_time_and_public_tcbinfo_mean_true_as_in_dstack() -> None:
    rendered = render(MANIFEST.read_bytes())
    assert ours()["public_tcbinfo"] is True
    assert ours()["secure_time"] is False
    without_tcbinfo = {k: v for k, v in ours().items() if k != "public_tcbinfo"}
    assert compare(rendered, canonical_json(without_tcbinfo)).differences == []
    without_time = {k: v for k, v in ours().items() if k != "secure_time"}
    (difference,) = compare(rendered, canonical_json(without_time)).differences
    assert (difference.field, difference.ours, difference.deployed) == (
        "secure_time",
        "false",
        "true",
    )


def test_a_number_is_not_a_boolean(tmp_path: Path) -> None:
    deployed = {**ours(), "kms_enabled": 1}
    code, out, _ = check(tmp_path, canonical_json(deployed))
    assert code == 1
    assert "kms_enabled: true or false" in out
    assert "MATTERS  kms_enabled" in out


def test_a_repeated_key_is_refused(tmp_path: Path) -> None:
    body = canonical_json(ours())
    twice = body[:-1] + b',"kms_enabled":false}'
    code, out, err = check(tmp_path, twice)
    assert code == 2
    assert "appears twice" in err
    assert out == ""
    with pytest.raises(ManifestError, match="appears twice"):
        strict_json(b'{"a":1,"a":2}', "x")


def test_non_json_inside_info_is_one_line(tmp_path: Path) -> None:
    code, _, err = check(tmp_path, json.dumps({"tcb_info": "{not json"}).encode())
    assert code == 2
    assert err.count("\n") == 1
    inner = json.dumps({"tcb_info": json.dumps({"app_compose": "[1"})}).encode()
    code, _, err = check(tmp_path, inner)
    assert code == 2
    assert "not JSON" in err


def test_field_names_with_terminal_escapes_are_printed_escaped(tmp_path: Path) -> None:
    deployed = {**ours(), "\x1b]0;owned\x07x\u202e": True}
    code, out, _ = check(tmp_path, canonical_json(deployed))
    assert code == 1
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\\x1b]0;owned\\x07x\\u202e" in out


def test_phala_official_pre_launch_script_is_recognised_by_its_sha256(tmp_path: Path) -> None:
    script = (PRELAUNCH / "prelaunch.sh").read_text()
    code, out, _ = check(tmp_path, canonical_json({**ours(), "pre_launch_script": script}))
    assert code == 0, out
    assert "Phala's official pre-launch script v0.0.19" in out
    assert "c021d8b8147901a7fad056d443c4145924407707" in out
    code, out, _ = check(tmp_path, canonical_json({**ours(), "pre_launch_script": script + " "}))
    assert code == 1


def test_login_material_in_allowed_envs_is_named(tmp_path: Path) -> None:
    deployed = {**ours(), "allowed_envs": ["DSTACK_AUTHORIZED_KEYS", "DSTACK_ROOT_PASSWORD"]}
    code, out, _ = check(tmp_path, canonical_json(deployed))
    assert code == 1
    assert "login material (DSTACK_ROOT_PASSWORD, DSTACK_AUTHORIZED_KEYS)" in out or (
        "login material (DSTACK_AUTHORIZED_KEYS, DSTACK_ROOT_PASSWORD)" in out
    )


def test_render_prints_a_deploy_command_safe_to_paste(tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = run(["render", str(MANIFEST), "-o", str(tmp_path / "a.json"), "--kms", "base"])
    assert code == 0
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("deploy"))
    assert "--no-dev-os" in line
    assert "--kms base" in line
    assert "--env-file" not in line


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from([*ours().keys(), "requirements", "port_policy", "verity_volumes", "\x1b["])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.dictionaries(FIELDS, JSON_VALUES, max_size=4), wrap=st.booleans(),
       garble=st.binary(max_size=3))  # fmt: skip
def test_fuzz_check_exits_as_documented_without_traceback_or_control_characters(
    tmp_path: Path, changes: dict[str, Any], wrap: bool, garble: bytes
) -> None:
    body = json.dumps({**ours(), **changes}).encode()
    if wrap:
        body = json.dumps({"tcb_info": json.dumps({"app_compose": body.decode()})}).encode()
    code, out, err = check(tmp_path, body[: len(body) - len(garble)] + garble)
    assert code in DOCUMENTED_CHECK_EXITS
    assert "Traceback" not in err
    assert err.count("\n") <= 1
    for line in (out + err).splitlines():
        assert line.isprintable(), line


def test_a_digest_of_the_shipped_table_matches_the_vector() -> None:
    table = json.loads((REPO / "phala/src/oauth3/phala/phala_prelaunch_scripts.json").read_text())
    digest = hashlib.sha256((PRELAUNCH / "prelaunch.sh").read_bytes()).hexdigest()
    assert table["scripts"][0]["sha256"] == digest
    assert table["scripts"][0]["version"] == "v0.0.19"
    assert sys.version_info >= (3, 11)


@settings(max_examples=200, deadline=None)
@given(answer=st.dictionaries(
    st.sampled_from(["compose_hash", "app_id", "os_image_hash", "app_env_encrypt_pubkey",
                     "kms_info", "node_id", "instance_type", "device_id"]),
    JSON_VALUES, max_size=8,
), honest_hash=st.booleans(), honest_image=st.booleans())  # fmt: skip
def test_fuzz_any_provision_answer_is_accepted_or_refused_never_a_crash(
    answer: dict[str, Any], honest_hash: bool, honest_image: bool
) -> None:
    rendered = render(MANIFEST.read_bytes())
    plan = DeployPlan(rendered=rendered, name="oauth3-test", envs={}, node_id=3)
    sent = canonical_json(compose_to_send(plan))
    if honest_hash:
        answer["compose_hash"] = hashlib.sha256(sent).hexdigest()
    if honest_image:
        answer["os_image_hash"] = PRODUCTION_IMAGE.hex()
    outcome: dict[str, Any] | DeployRefused
    try:
        outcome = check_provision(plan, sent, answer)
    except DeployRefused as refused:
        outcome = refused
    if isinstance(outcome, DeployRefused):
        assert str(outcome)
        return
    assert outcome["compose_hash"] == hashlib.sha256(sent).hexdigest()
    assert answer.get("node_id", 3) == 3
    assert len(bytes.fromhex(outcome["app_id"])) == 20
