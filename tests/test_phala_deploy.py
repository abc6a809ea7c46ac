"""oauth3-phala deploy against a fake Phala Cloud API played honest and dishonest: every lie visible
before commit ends with no commit request in the fake's journal; one after commit stops the CVM."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from oauth3.attestation import parse_quote
from oauth3.attestation.dstack_os import os_releases
from oauth3.phala.deploy import DeployPlan, compose_to_send
from oauth3.phala.deploy_cli import verify_argv
from oauth3.phala.manifest import canonical_json, parse_images, render
from oauth3.phala.os_pin import BY_REGISTERS, BY_RELEASE, ships_document
from oauth3.verifier.policy import Policy
from tests.phala_fake import PRODUCTION_IMAGE, UNMEASURED_IMAGE, FakePhala
from tests.stack import RunningStack, collateral, pinned_release, root, running_stack, serving

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "phala-app.yaml"
SIDECAR = "registry.example/oauth3-sidecar@sha256:" + "ab" * 32
SERVICE = "registry.example/oauth3-service@sha256:" + "cd" * 32
IMAGES = [f"sidecar={SIDECAR}", f"service={SERVICE}"]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakePhala, str]]:
    """The fake API on an ephemeral loopback port, and its API prefix."""
    state = FakePhala()
    runner = web.AppRunner(state.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield state, f"http://127.0.0.1:{port}/api/v1"
    await runner.cleanup()


def manifest_with_env(tmp_path: Path) -> Path:
    """The project's manifest, allowing one variable (for the encrypted-env round trip)."""
    document = yaml.safe_load(MANIFEST.read_bytes())
    document["allowed_envs"] = ["GREETING"]
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def deploy(prefix: str, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    """oauth3-phala deploy as a process; (exit code, stdout, stderr)."""
    env = {**os.environ, "PHALA_CLOUD_API_PREFIX": prefix, "PHALA_CLOUD_API_KEY": "test-key"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oauth3.phala", "deploy", str(manifest_with_env(tmp_path)),
        "--name", "oauth3-test", "--image", f"sidecar={SIDECAR}", "--image", f"service={SERVICE}",
        "-e", "GREETING=hello world", "--out", str(tmp_path / "deployment.json"),
        "--policy-out", str(tmp_path / "policy.toml"), "--poll-interval", "0.01", *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_an_honest_backend_deploys_and_the_env_round_trips(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    code, out, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 0, out + err
    assert len(state.commits()) == 1
    assert state.received_envs == [{"GREETING": "hello world"}]
    record = json.loads((tmp_path / "deployment.json").read_text())
    assert record["state"] == "deployed"
    assert record["cvm_id"] == "cvm-1"
    assert record["app_id"] == state.app_id
    assert record["instance_id"] == "cd" * 20
    sent = state.journal[0][2]
    assert sent["prefer_dev"] is False
    assert sent["compose_file"]["secure_time"] is False
    assert "DSTACK_AUTHORIZED_KEYS" not in sent["compose_file"]["allowed_envs"]
    assert record["compose_hash"] in (tmp_path / "policy.toml").read_text()
    assert "NOT VERIFIED: --no-verify" in out
    assert "CVM running" in out


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("wrong_hash", "is not sha256 of the app-compose sent"),
        ("inject_ssh", "is not sha256 of the app-compose sent"),
        ("foreign_script", "is not sha256 of the app-compose sent"),
        ("dev_os", "dev OS image"),
        ("wrong_key_signature", "signed another env-encryption key"),
    ],
)
async def test_a_lie_visible_before_commit_commits_nothing(
    fake: tuple[FakePhala, str], tmp_path: Path, mode: str, reason: str
) -> None:
    state, prefix = fake
    state.mode = mode
    code, out, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 3, out + err
    assert reason in err
    assert err.count("\n") == 1
    assert state.commits() == []
    assert "Traceback" not in err


async def test_a_backend_storing_other_bytes_than_it_hashed_is_caught_and_stopped(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    state.mode = "stores_other"
    code, _, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 5
    assert "the CVM was stopped" in err
    assert ("POST", "/api/v1/cvms/cvm-1/stop", None) in state.journal
    assert json.loads((tmp_path / "deployment.json").read_text())["state"] == "committed"


async def test_a_5xx_is_retried_then_deploys(fake: tuple[FakePhala, str], tmp_path: Path) -> None:
    state, prefix = fake
    state.mode = "flaky"
    code, out, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 0, out + err
    assert len(state.commits()) == 1


async def test_a_409_on_commit_is_one_line_and_a_rerun_neither_duplicates_nor_reprovisions(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    state.mode = "conflict"
    code, _, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 4
    assert "HTTP 409" in err
    assert err.count("\n") == 1
    provisions = [b for _, _, b in state.journal if isinstance(b, dict) and "compose_file" in b]
    assert len(provisions) == 1
    state.mode = "honest"
    code, out, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 0, out + err
    assert "resuming" in out
    provisions = [b for _, _, b in state.journal if isinstance(b, dict) and "compose_file" in b]
    assert len(provisions) == 1
    assert len({(c["app_id"], c["compose_hash"]) for c in state.commits()}) == 1
    again, _, err = await deploy(prefix, tmp_path, "--no-verify")
    assert again == 3
    assert "deployed already" in err


async def test_api_errors_are_one_line(fake: tuple[FakePhala, str], tmp_path: Path) -> None:
    _, prefix = fake
    code, _, err = await deploy(prefix.replace("/api/v1", "/nowhere"), tmp_path, "--no-verify")
    assert code == 4
    assert err.count("\n") == 1
    closed = "http://127.0.0.1:9/api/v1"
    code, _, err = await deploy(closed, tmp_path, "--no-verify", "--timeout", "2")
    assert code == 4
    assert err.count("\n") == 1
    assert "Traceback" not in err


def simulated_manifest(tmp_path: Path) -> tuple[Path, str]:
    """A manifest whose rendering is byte for byte the app-compose deploy sends for
    manifest_with_env, so the simulator measures what the deployment commits; and its hash."""
    rendered = render(manifest_with_env(tmp_path).read_bytes(), parse_images(IMAGES))
    sent = compose_to_send(DeployPlan(rendered=rendered, name="oauth3-test", envs={}))
    path = tmp_path / "simulated.yaml"
    path.write_text(yaml.safe_dump(sent))
    again = render(path.read_bytes())
    assert again.app_compose == canonical_json(sent)
    return path, again.compose_hash.hex()


def verify_flags(stack: RunningStack) -> list[str]:
    """--verify-arg flags: the stack's mock root and collateral, a simulator allowed. Nothing
    pins the platform: deploy's own pins must."""
    flags = [*root(stack), *collateral(stack)]
    pairs = zip(flags[0::2], flags[1::2], strict=True)
    return ["--verify-arg=--allow-simulated", *(f"--verify-arg={a}={b}" for a, b in pairs)]


async def test_the_verify_step_pins_the_release_the_backend_provisioned(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    manifest, digest = simulated_manifest(tmp_path)
    record_path = tmp_path / "deployment.json"
    with running_stack(manifest=manifest) as stack:
        release = pinned_release(stack)
        state.app_url, state.app_id = stack.base_url, digest[:40]
        # the backend names a published release that ships a document; the CVM boots another
        state.os_image = PRODUCTION_IMAGE
        code, out, err = await deploy(prefix, tmp_path, *verify_flags(stack))
        assert code == 6, out + err
        assert "is not a pinned release" in err
        assert len(state.commits()) == 1
        assert json.loads(record_path.read_text())["state"] == "committed"
        record_path.unlink()
        state.os_image = bytes.fromhex(release)
        state.app_id = "ab" * 20
        allow = ["--allow-os-image", release]
        code, out, err = await deploy(prefix, tmp_path, *allow, *verify_flags(stack))
        assert code == 6, out + err
        assert "oauth3-verify refused the running CVM" in err
        record_path.unlink()
        state.app_id = digest[:40]
        code, out, err = await deploy(prefix, tmp_path, *allow, *verify_flags(stack))
    assert code == 0, out + err
    assert "verified   SIMULATED (exit 0)" in out
    assert f"OS release os_image_hash {release}: MRTD and RTMR0-2 recomputed" in out
    record = json.loads(record_path.read_text())
    assert (record["state"], record["compose_hash"]) == ("deployed", digest)
    assert (record["os_image_hash"], record["platform_pinned_by"]) == (release, "release")
    assert f'image_hashes = ["{release}"]' in (tmp_path / "policy.toml").read_text()


def register_policy(path: Path, registers: list[bytes], *extra: str) -> Path:
    """A policy pinning MRTD and RTMR0-2 as a [[platform]] (and `extra` lines first)."""
    values = dict(zip(["mrtd", "rtmr0", "rtmr1", "rtmr2"], registers, strict=True))
    lines = ["format = 1", *extra, "[[platform]]", 'name = "measured out of band"']
    path.write_text("\n".join([*lines, *(f'{k} = "{v.hex()}"' for k, v in values.items())]))
    return path


async def test_a_release_without_a_measurement_document_needs_register_pins(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    state.os_image = UNMEASURED_IMAGE
    for skip in ([], ["--no-verify"]):
        code, out, err = await deploy(prefix, tmp_path, *skip)
        assert code == 3, out + err
        assert "ships no measurement document" in err
        assert "--policy FILE with a [[platform]]" in err
        assert err.count("\n") == 1
    os_pin = f'image_hashes = ["{UNMEASURED_IMAGE.hex()}"]'
    both = register_policy(tmp_path / "both.toml", [bytes(48)] * 4, "[os]", os_pin)
    code, out, err = await deploy(prefix, tmp_path, "--policy", str(both))
    assert code == 3, out + err
    assert "so that pin can never be checked" in err
    assert state.commits() == []
    manifest, digest = simulated_manifest(tmp_path)
    with running_stack(manifest=manifest) as stack:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{stack.base_url}/attestation") as response,
        ):
            report = parse_quote(base64.b64decode((await response.json())["quote"])).report
        state.app_url, state.app_id = stack.base_url, digest[:40]
        pins = register_policy(tmp_path / "pins.toml", [report.mr_td, *report.rtmr[:3]])
        code, out, err = await deploy(prefix, tmp_path, "--policy", str(pins), *verify_flags(stack))
    assert code == 0, out + err
    assert "MRTD and RTMR0-2 match your policy's [[platform]] register pins" in out
    record = json.loads((tmp_path / "deployment.json").read_text())
    assert record["platform_pinned_by"] == "registers"
    assert "image_hashes" not in (tmp_path / "policy.toml").read_text()


async def test_what_the_users_policy_pins_is_checked_before_commit(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    other_app = tmp_path / "app.toml"
    other_app.write_text(f'format = 1\n[app]\ncompose_hashes = ["{"00" * 32}"]\n')
    code, out, err = await deploy(prefix, tmp_path, "--policy", str(other_app))
    assert code == 3, out + err
    assert "is not one your policy pins" in err
    other_os = tmp_path / "os.toml"
    other_os.write_text(f'format = 1\n[os]\nimage_hashes = ["{"00" * 32}"]\n')
    code, out, err = await deploy(prefix, tmp_path, "--policy", str(other_os))
    assert code == 3, out + err
    assert "not one you allow" in err
    code, out, err = await deploy(prefix, tmp_path, "--cvm-id", "cvm-7")
    assert code == 3, out + err
    assert "does not name the OS the CVM runs" in err
    assert state.commits() == []


async def run_check(prefix: str, *args: str) -> tuple[int, str, str]:
    """oauth3-phala check as a process against the fake API; (exit code, stdout, stderr)."""
    env = {**os.environ, "PHALA_CLOUD_API_PREFIX": prefix, "PHALA_CLOUD_API_KEY": "test-key"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oauth3.phala", "check", str(MANIFEST), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_fetches_the_deployed_compose_by_cvm_id_or_info_url(
    fake: tuple[FakePhala, str],
) -> None:
    state, prefix = fake
    ours = json.loads(render(MANIFEST.read_bytes()).app_compose)
    state.stored = {**ours, "secure_time": True}
    code, out, err = await run_check(prefix, "--cvm-id", "cvm-1")
    assert code == 0, out + err
    assert "note     secure_time: ours false, deployed true" in out
    assert ("GET", "/api/v1/cvms/cvm-1/compose_file", None) in state.journal
    state.stored = {**ours, "kms_enabled": 1}
    code, out, _ = await run_check(prefix, "--cvm-id", "cvm-1")
    assert code == 1
    assert "MATTERS  kms_enabled" in out
    code, _, err = await run_check(prefix, "--cvm-id", "../x")
    assert code == 4
    assert "not a valid id" in err

    info = {"tcb_info": json.dumps({"app_compose": json.dumps({**ours, "public_logs": False})})}

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(info)

    async with serving(answer) as url:
        code, out, _ = await run_check(prefix, "--url", f"{url}/prpc/Info")
    assert code == 1
    assert "MATTERS  public_logs" in out

    async def repeated(request: web.Request) -> web.Response:
        return web.Response(body=b'{"tcb_info": "{}", "tcb_info": "{}"}')

    async with serving(repeated) as url:
        code, out, err = await run_check(prefix, "--url", f"{url}/prpc/Info")
    assert (code, out) == (2, "")
    assert "appears twice" in err


@pytest.mark.parametrize(("mode", "code"), [("honest", 0), ("inject_ssh", 3), ("stores_other", 5)])
async def test_an_update_is_checked_before_it_is_applied(
    fake: tuple[FakePhala, str], tmp_path: Path, mode: str, code: int
) -> None:
    state, prefix = fake
    state.mode = mode
    done, out, err = await deploy(prefix, tmp_path, "--no-verify", "--cvm-id", "cvm-7")
    assert done == code, out + err
    update = [b for m, p, b in state.journal if p.endswith("/cvm-7/compose_file/provision")]
    assert len(update) == 1
    assert update[0]["update_env_vars"] is True
    if code == 3:
        assert state.commits() == []
        return
    (patch,) = state.commits()
    assert patch["update_env_vars"] is True
    assert state.received_envs == [{"GREETING": "hello world"}]
    if code == 0:
        record = json.loads((tmp_path / "deployment.json").read_text())
        assert (record["cvm_id"], record["state"]) == ("cvm-7", "deployed")
    else:
        assert ("POST", "/api/v1/cvms/cvm-7/stop", None) in state.journal


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (401, "API key was refused"),
        (465, "must be registered on the app contract"),
        (466, "expired"),
        (467, "not verified"),
        (468, "not registered on-chain"),
        (503, "Phala Cloud failed"),
    ],
)
async def test_each_api_error_is_one_clear_line(
    fake: tuple[FakePhala, str], tmp_path: Path, status: int, meaning: str
) -> None:
    state, prefix = fake
    state.mode = f"status:{status}"
    code, _, err = await deploy(prefix, tmp_path, "--no-verify")
    assert code == 4
    assert f"HTTP {status}" in err
    assert meaning in err
    assert err.count("\n") == 1
    assert "\x1b" not in err
    assert state.commits() == []


async def test_on_chain_kms_stops_after_the_checks_with_what_to_register(
    fake: tuple[FakePhala, str], tmp_path: Path
) -> None:
    state, prefix = fake
    state.mode = "on_chain"
    code, out, err = await deploy(prefix, tmp_path, "--no-verify", "--kms", "base")
    assert code == 7, out + err
    assert "addComposeHash(bytes32 0x" in err
    assert "holds no private key" in err
    assert state.journal[0][2]["kms"] == "BASE"
    assert state.commits() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a\x1b[2J"], "--name"),
        (["-e", "OTHER=1"], "OTHER is not in the manifest's allowed_envs"),
        (["-e", "GREETING"], "not KEY=VALUE"),
        (["--allow-os-image", "xyz"], "--allow-os-image"),
        (["--pre-launch-script", "no-such-prelaunch.sh"], "No such file"),
        (["--policy", "no-such-policy.toml"], "No such file"),
    ],
)
async def test_bad_deploy_input_is_one_line_exit_2_and_reaches_no_api(
    fake: tuple[FakePhala, str], tmp_path: Path, args: list[str], message: str
) -> None:
    state, prefix = fake
    code, out, err = await deploy(prefix, tmp_path, "--no-verify", *args)
    assert code == 2, out + err
    assert message in err
    assert err.count("\n") == 1
    assert "\x1b" not in err
    assert state.journal == []


def test_the_verify_pins_leave_to_the_users_policy_what_it_pins() -> None:
    record = {
        "compose_hash": "cc" * 32,
        "app_id": "dd" * 20,
        "os_image_hash": "ee" * 32,
        "platform_pinned_by": BY_RELEASE,
    }
    argv = verify_argv(record, "https://app.example", ["--pccs", "x"])
    assert argv[:6] == [
        "--expect-compose-hash", "cc" * 32, "--expect-app-id", "dd" * 20,
        "--expect-os-image-hash", "ee" * 32,
    ]  # fmt: skip
    assert argv[-4:] == ["x", "--json", "--", "https://app.example"]
    pinned = Policy(compose_hashes=frozenset([b"\xcc" * 32]), os_image_hashes=frozenset([b"\x01"]))
    argv = verify_argv(record, "https://app.example", [], ("mine.toml", pinned))
    assert argv[:4] == ["--policy", "mine.toml", "--expect-app-id", "dd" * 20]
    assert "--expect-os-image-hash" not in argv
    by_registers = verify_argv({**record, "platform_pinned_by": BY_REGISTERS}, "u", [])
    assert "--expect-os-image-hash" not in by_registers


def test_which_releases_ship_a_measurement_document() -> None:
    by_version = {r.version: ships_document(r) for r in os_releases().values() if not r.dev}
    assert by_version["0.5.12"] is False
    assert by_version["0.6.0-rc0"] is True
    assert by_version["0.6.6"] is True
