"""`oauth3-phala deploy`: a Phala Cloud deployment that commits no hash before checking it.

render → provision with every app-compose field explicit → refuse before commit unless the
backend's compose hash is sha256 of the exact bytes sent, its OS image is a production one you
allow whose platform the verify step can pin (see `os_pin`), and its answer holds what was asked
→ check the env key → encrypt the env → commit → wait → read back the stored compose (its hash
must be the committed one; else the CVM is stopped) → verify the running CVM with oauth3-verify,
pinning the provisioned release → write deployment.json and a policy.

Re-runs: before the commit request is sent, `deployment.json` records the checked app id, compose
hash and env key (state `committing`). A re-run with the same compose hash resumes from there and
sends the same commit again (Phala answers an idempotent commit with the same CVM), so no second
CVM is created and no unchecked hash is ever committed; a finished deployment (state `deployed`)
is never redeployed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oauth3.attestation.dstack_os import release_for
from oauth3.verifier.output import printable
from oauth3.verifier.policy import Policy

from .api import PhalaCloud
from .envcrypt import EnvKeyError, encrypt_env, env_key_signer, parse_hex
from .manifest import Rendered, canonical_json
from .os_pin import PlatformUnverifiable, check_app_pins, platform_pinning
from .records import read_record, write_record
from .schema import BOOLEAN_DEFAULTS

RUNNING = "running"
FAILED_STATES = ("failed", "error", "stopped", "terminated")


class DeployRefused(Exception):
    """Stopped before commit: nothing was committed. The message says why."""


class DeployFailed(Exception):
    """Caught after commit (the CVM was stopped when it ran the wrong thing)."""


class OnChainRegistrationNeeded(Exception):
    """On-chain KMS: the compose hash passed every check; the owner must register it."""


@dataclass(frozen=True, slots=True)
class DeployPlan:
    """Everything a deployment needs, validated by the command line."""

    rendered: Rendered
    name: str
    envs: Mapping[str, str]
    kms: str = "phala"
    node_id: int | None = None
    instance_type: str | None = None
    pre_launch_script: str | None = None
    allowed_os_images: frozenset[bytes] = frozenset()
    kms_signer: str | None = None
    cvm_id: str | None = None
    policy: Policy | None = None
    verify: bool = True
    out: Path = Path("deployment.json")
    poll_s: float = 2.0
    wait_s: float = 900.0


def compose_to_send(plan: DeployPlan) -> dict[str, Any]:
    """The app-compose sent to Phala: the manifest with every flag explicit, the pre-launch
    script given (none when absent), nothing left for the backend to choose."""
    document = {**BOOLEAN_DEFAULTS, **plan.rendered.document}
    document["pre_launch_script"] = plan.pre_launch_script or ""
    document["allowed_envs"] = sorted(document.get("allowed_envs", []))
    return document


def provision_request(plan: DeployPlan, compose: Mapping[str, Any]) -> dict[str, Any]:
    """The `POST /cvms` body: the compose, the KMS, no dev OS, only the declared env keys."""
    request: dict[str, Any] = {
        "name": plan.name,
        "compose_file": dict(compose),
        "kms": plan.kms.upper(),
        "prefer_dev": False,
        "env_keys": sorted(plan.envs),
    }
    if plan.node_id is not None:
        request["node_id"] = plan.node_id
    if plan.instance_type is not None:
        request["instance_type"] = plan.instance_type
    return request


def _hex_field(answer: Mapping[str, Any], name: str, size: int) -> bytes:
    try:
        return parse_hex(answer.get(name), size, name)
    except EnvKeyError as exc:
        raise DeployRefused(f"the provision answer's {exc}") from None


def check_os_image(answer: Mapping[str, Any], allowed: frozenset[bytes]) -> bytes:
    """The OS image the backend chose, refused when it is a dev image, unknown, or not allowed."""
    image = _hex_field(answer, "os_image_hash", 32)
    release = release_for(image)
    if release is not None and release.dev:
        raise DeployRefused(f"the backend chose a dev OS image ({release.image}): root login")
    if allowed and image not in allowed:
        raise DeployRefused(f"the backend chose OS image {image.hex()}, not one you allow")
    if release is None and not allowed:
        raise DeployRefused(
            f"the backend chose OS image {image.hex()}, which is not a published dstack image; "
            "allow it with --allow-os-image HASH after checking it"
        )
    return image


def check_compose_hash(sent: bytes, answer: Mapping[str, Any]) -> bytes:
    """The backend's compose hash, refused unless it is sha256 of exactly the bytes sent."""
    predicted = hashlib.sha256(sent).digest()
    returned = _hex_field(answer, "compose_hash", 32)
    if returned != predicted:
        raise DeployRefused(
            f"the backend's compose hash {returned.hex()} is not sha256 of the app-compose sent "
            f"({predicted.hex()}): it built another compose (an added SSH key, pre-launch script "
            "or flag); nothing was committed"
        )
    return predicted


def check_provision(plan: DeployPlan, sent: bytes, answer: Mapping[str, Any]) -> dict[str, Any]:
    """What the provision answer must hold before anything is committed (DeployRefused)."""
    predicted = check_compose_hash(sent, answer)
    allowed = plan.allowed_os_images | (plan.policy.os_image_hashes if plan.policy else set())
    os_image = check_os_image(answer, frozenset(allowed))
    for asked, key in ((plan.node_id, "node_id"), (plan.instance_type, "instance_type")):
        if asked is not None and key in answer and answer[key] != asked:
            raise DeployRefused(f"asked {key} {asked}, the backend chose {answer[key]!r}")
    kms_info = answer.get("kms_info")
    on_chain = isinstance(kms_info, dict) and kms_info.get("chain_id") is not None
    release = release_for(os_image)
    facts = {
        "compose_hash": predicted.hex(),
        "os_image_hash": os_image.hex(),
        "os_release": release.label if release else None,
        "on_chain": on_chain,
    }
    if not on_chain:
        facts["app_id"] = _hex_field(answer, "app_id", 20).hex()
        facts["env_pubkey"] = _hex_field(answer, "app_env_encrypt_pubkey", 32).hex()
    facts["kms_id"] = kms_info.get("id") if isinstance(kms_info, dict) else None
    check_platform(plan, facts, os_image)
    return facts


def check_platform(plan: DeployPlan, facts: dict[str, Any], os_image: bytes | None) -> None:
    """Record how the verify step will pin the platform; DeployRefused when it never could,
    or when the user's policy pins an app other than the one provisioned."""
    try:
        check_app_pins(facts, plan.policy)
        if plan.verify or os_image is not None:
            facts["platform_pinned_by"] = platform_pinning(os_image, plan.policy)
    except PlatformUnverifiable as exc:
        raise DeployRefused(str(exc)) from None


async def check_env_key(api: PhalaCloud, plan: DeployPlan, facts: dict[str, Any]) -> str:
    """The KMS signer of the app's env key (a line for the report); DeployRefused when the key
    the API signs is another, the signature fails, or the signer is not the one you pinned.
    An update's provision returns no key: the signed one is then taken into `facts`."""
    kms_id = facts.get("kms_id")
    if not isinstance(kms_id, str):
        if plan.kms_signer:
            raise DeployRefused("--kms-signer given, but the provision names no KMS to ask")
        return "env key signature: not checked (the provision answer names no KMS)"
    answer = await api.env_pubkey(kms_id, facts["app_id"])
    try:
        signed = parse_hex(answer.get("public_key"), 32, "public_key")
        signature = parse_hex(answer.get("signature"), 65, "signature")
        signer = env_key_signer(signed, signature, facts["app_id"])
    except EnvKeyError as exc:
        raise DeployRefused(f"env-encryption key: {exc}") from None
    if facts.get("env_pubkey") is None:
        facts["env_pubkey"] = signed.hex()
    elif signed.hex() != facts["env_pubkey"]:
        raise DeployRefused("the KMS signed another env-encryption key than provision returned")
    if plan.kms_signer and signer.lower() != plan.kms_signer.lower():
        raise DeployRefused(f"the env key is signed by {signer}, not by the --kms-signer given")
    return f"env key signature: KMS signer {signer}" + ("" if plan.kms_signer else " (not pinned)")


async def wait_running(
    api: PhalaCloud, cvm_id: str, plan: DeployPlan, say: Callable[[str], None]
) -> dict[str, Any]:
    """Poll the CVM until it runs, saying each state change; DeployFailed on failure/timeout."""
    started, last = time.monotonic(), None
    while True:
        record = await api.cvm(cvm_id)
        status = str(record.get("status", "unknown"))
        if status != last:
            say(f"  {time.monotonic() - started:5.1f} s  CVM {printable(status)}")
            last = status
        if status == RUNNING:
            return record
        if status in FAILED_STATES:
            raise DeployFailed(f"the CVM is {printable(status)}")
        if time.monotonic() - started > plan.wait_s:
            raise DeployFailed(f"the CVM is not running after {plan.wait_s:g} s")
        await asyncio.sleep(plan.poll_s)


async def check_stored(api: PhalaCloud, cvm_id: str, committed: str) -> None:
    """The backend's stored compose must hash to the committed hash; else stop the CVM."""
    stored = await api.compose_file(cvm_id)
    try:
        digest = hashlib.sha256(canonical_json(stored)).hexdigest()
    except ValueError:
        digest = "(not an app-compose)"
    if digest != committed:
        await api.stop(cvm_id)
        raise DeployFailed(
            f"the stored compose hashes to {digest}, not the committed {committed}: the CVM "
            "was stopped"
        )


async def provision_checked(
    api: PhalaCloud, plan: DeployPlan, say: Callable[[str], None]
) -> dict[str, Any]:
    """Provision and check (nothing committed); a resumable record, or a refusal."""
    sent_document = compose_to_send(plan)
    sent = canonical_json(sent_document)
    say(f"provision  compose hash {hashlib.sha256(sent).hexdigest()} (predicted)")
    answer = await api.provision(provision_request(plan, sent_document))
    facts = check_provision(plan, sent, answer)
    say(f"checked    compose hash, OS image {facts['os_release'] or facts['os_image_hash']}")
    if facts["on_chain"]:
        token = answer.get("token")
        raise OnChainRegistrationNeeded(
            f"compose hash 0x{facts['compose_hash']} passed every check. Register it on your "
            "DstackApp contract (addComposeHash(bytes32 0x"
            f"{facts['compose_hash']}), with addDevice for device {answer.get('device_id')}) "
            "from your own wallet, then commit that hash with Phala's CLI"
            f"{f' (commit token {token})' if isinstance(token, str) else ''}; oauth3-phala "
            "holds no private key and does not commit on-chain deployments"
        )
    say(await check_env_key(api, plan, facts))
    return {**facts, "state": "committing", "name": plan.name}


async def update_checked(
    api: PhalaCloud, plan: DeployPlan, cvm_id: str, say: Callable[[str], None]
) -> dict[str, Any]:
    """Prepare a new compose for a running CVM and check it (nothing applied); a resumable
    record, or a refusal. The CVM keeps its OS image, which this does not re-check."""
    sent_document = compose_to_send(plan)
    sent = canonical_json(sent_document)
    say(
        f"provision  update of {printable(cvm_id)}: compose hash {hashlib.sha256(sent).hexdigest()}"
    )
    body = {**sent_document, "update_env_vars": bool(plan.envs)}
    answer = await api.provision_update(cvm_id, body)
    facts: dict[str, Any] = {"compose_hash": check_compose_hash(sent, answer).hex()}
    kms_info = answer.get("kms_info")
    on_chain = isinstance(kms_info, dict) and kms_info.get("chain_id") is not None
    if on_chain and answer.get("compose_hash_registered") is not True:
        raise OnChainRegistrationNeeded(
            f"compose hash 0x{facts['compose_hash']} passed every check. Register it on "
            f"your DstackApp contract (addComposeHash(bytes32 0x{facts['compose_hash']})) "
            "from your own wallet, then run this again; oauth3-phala holds no private key"
        )
    facts["app_id"] = _hex_field(answer, "app_id", 20).hex()
    facts["kms_id"] = kms_info.get("id") if isinstance(kms_info, dict) else None
    facts["env_pubkey"] = None
    check_platform(plan, facts, None)
    say("checked    compose hash")
    if plan.envs or plan.kms_signer:
        say(await check_env_key(api, plan, facts))
    if plan.envs and facts["env_pubkey"] is None:
        raise DeployRefused("no env-encryption key to encrypt the environment with")
    return {**facts, "state": "committing", "name": plan.name, "cvm_id": cvm_id, "update": True}


async def commit_checked(api: PhalaCloud, plan: DeployPlan, record: dict[str, Any]) -> str:
    """Commit the checked record (create, or apply an update); the CVM id."""
    key = record.get("env_pubkey")
    encrypted = encrypt_env(plan.envs, bytes.fromhex(key)) if plan.envs and key else None
    env = {"env_keys": sorted(plan.envs), "encrypted_env": encrypted} if plan.envs else {}
    if record.get("update"):
        body = {"compose_hash": record["compose_hash"], **env, "update_env_vars": bool(env)}
        await api.commit_update(record["cvm_id"], body)
        return str(record["cvm_id"])
    created = await api.commit(
        {"app_id": record["app_id"], "compose_hash": record["compose_hash"], **env}
    )
    cvm_id = str(created.get("id") or created.get("vm_uuid") or "")
    if not cvm_id:
        raise DeployFailed("the commit answer names no CVM id")
    return cvm_id


async def deploy(api: PhalaCloud, plan: DeployPlan, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the whole flow; the record written to plan.out (atomically, at each stage)."""
    record = read_record(plan.out)
    predicted = hashlib.sha256(canonical_json(compose_to_send(plan))).hexdigest()
    if record is not None and record.get("compose_hash") == predicted:
        if record.get("state") == "deployed":
            raise DeployRefused(
                f"{plan.out} says this compose is deployed already (CVM "
                f"{record.get('cvm_id')}); nothing to do"
            )
        say(f"resuming   {plan.out}: app {record['app_id']}, commit of a checked hash")
    elif plan.cvm_id is not None:
        record = await update_checked(api, plan, plan.cvm_id, say)
        write_record(plan.out, record)
    else:
        record = await provision_checked(api, plan, say)
        write_record(plan.out, record)
    cvm_id = await commit_checked(api, plan, record)
    record |= {"cvm_id": cvm_id, "state": "committed"}
    write_record(plan.out, record)
    say(f"committed  CVM {printable(cvm_id)}; waiting for it to run")
    running = await wait_running(api, cvm_id, plan, say)
    await check_stored(api, cvm_id, record["compose_hash"])
    say("checked    the stored compose is the committed one")
    record |= {
        "instance_id": running.get("instance_id"),
        "app_url": running.get("app_url"),
        "state": "deployed",
    }
    return record
