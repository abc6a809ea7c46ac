"""dstack's app-compose.json at HEAD (`struct AppCompose` in `dstack-types`, dstack@312dc60):
each field's exact JSON type, its default when absent, and what a change to it means.

Types are exact: `1` is not `true`, `"2"` and `2` are both versions but `"02"` is neither. A value
dstack's parser would refuse, or read differently from what it says, is a problem here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from oauth3.attestation import is_exactly, json_type_name

RUNNERS = ("docker-compose", "nerdctl-compose", "bash")
SNAPSHOTTERS = ("overlayfs", "stargz")
KEY_PROVIDERS = ("none", "kms", "local", "tpm")
MAX_INIT_SCRIPTS = 5
# env names that let whoever sets them log in to the CVM (Phala's pre-launch script reads them)
LOGIN_ENVS = ("DSTACK_ROOT_PASSWORD", "DSTACK_AUTHORIZED_KEYS")
BOOLEAN_DEFAULTS: Mapping[str, bool] = {
    "kms_enabled": False,
    "gateway_enabled": False,
    "tproxy_enabled": False,
    "local_key_provider_enabled": False,
    "public_logs": False,
    "public_sysinfo": False,
    "public_tcbinfo": True,
    "no_instance_id": False,
    "secure_time": True,
}
DEFAULTS: Mapping[str, Any] = {
    **BOOLEAN_DEFAULTS,
    "features": [],
    "allowed_envs": [],
    "init_script": [],
    "swap_size": 0,
    "event_log_version": 1,
    "verity_volumes": [],
}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
HUMAN_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]i?[bB]?)?")
# fields whose change alters what runs, who holds the keys, or what the world can read
IMPORTANT_FIELDS = {
    "docker_compose_file": "another set of containers",
    "runner": "another way to start the app",
    "snapshotter": "another way to unpack the images",
    "bash_script": "a script that runs the app",
    "init_script": "runs as root before the containers",
    "kms_enabled": "changes who derives the app's keys",
    "key_provider": "changes who derives the app's keys",
    "key_provider_id": "changes who derives the app's keys",
    "local_key_provider_enabled": "changes who derives the app's keys",
    "public_logs": "changes what anyone can read",
    "public_sysinfo": "changes what anyone can read",
    "public_tcbinfo": "changes what anyone can read",
    "requirements": "changes what the guest demands before it gets keys",
    "verity_volumes": "other read-only volumes mounted into the app",
    "port_policy": "changes which ports the gateway forwards, and how",
    "no_instance_id": "replicas would share one disk key and look alike",
    "docker_config": "legacy registry credentials (removed in dstack 0.5.5)",
    "features": "legacy switches (kms, tproxy-net)",
}
HARMLESS_FIELDS = {
    "manifest_version": "format version",
    "name": "display name",
    "gateway_enabled": "routing through the dstack gateway",
    "tproxy_enabled": "routing through the dstack gateway (old name)",
    "secure_time": "time source at boot",
    "storage_fs": "file system of the data disk",
    "swap_size": "swap space",
    "event_log_version": "RTMR3 digest format",
}


def _str_list(value: Any) -> bool:
    return is_exactly(value, list) and all(is_exactly(v, str) for v in value)


def _version(value: Any) -> str | None:
    if is_exactly(value, int):
        return None if value in (1, 2) else "a number only for 1 and 2; newer ones a string"
    if is_exactly(value, str) and re.fullmatch(r"[1-9][0-9]{0,8}", value):
        return None
    return 'a positive integer, or its canonical string (e.g. "3")'


def _init_script(value: Any) -> str | None:
    if is_exactly(value, str) or (_str_list(value) and len(value) <= MAX_INIT_SCRIPTS):
        return None
    return f"a script or a list of at most {MAX_INIT_SCRIPTS} scripts"


def _allowed_envs(value: Any) -> str | None:
    if not _str_list(value) or not all(ENV_NAME.fullmatch(v) for v in value):
        return "a list of environment variable names"
    login = [v for v in value if v in LOGIN_ENVS]
    if login:
        return f"names login material ({', '.join(login)}): whoever deploys could log in as root"
    return None


def _swap_size(value: Any) -> str | None:
    if (is_exactly(value, int) and value >= 0) or (
        is_exactly(value, str) and HUMAN_SIZE.fullmatch(value)
    ):
        return None
    return 'a byte count or a size such as "2G"'


def _keys_within(value: Any, allowed: set[str]) -> str | None:
    if not is_exactly(value, dict):
        return "an object"
    unknown = sorted(set(value) - allowed)
    return f"has unknown key {unknown[0]!r}" if unknown else None


def _port_policy(value: Any) -> str | None:
    problem = _keys_within(value, {"ports", "restrict_mode"})
    if problem:
        return problem
    if "restrict_mode" in value and not is_exactly(value["restrict_mode"], bool):
        return "restrict_mode must be true or false"
    ports = value.get("ports", [])
    if not is_exactly(ports, list):
        return "ports must be a list"
    for port in ports:
        if _keys_within(port, {"port", "pp"}) or not is_exactly(port.get("port"), int):
            return "each port is {port: 1-65535, pp: true|false}"
        if not 0 < port["port"] < 65536 or ("pp" in port and not is_exactly(port["pp"], bool)):
            return "each port is {port: 1-65535, pp: true|false}"
    return None


GPU_POLICY_KEYS = {"attest_gpu", "rego", "allow_devtools", "allow_debug", "allow_insecure_boot"}
REQUIREMENT_KEYS = {
    "os_version",
    "platforms",
    "tdx_measure_acpi_tables",
    "launch_token_hash",
    "gpu_policy",
}


def _gpu_policy(value: Any) -> str | None:
    problem = _keys_within(value, GPU_POLICY_KEYS)
    if problem:
        return f"gpu_policy {problem}"
    for key, item in value.items():
        if not (is_exactly(item, str) if key == "rego" else is_exactly(item, bool)):
            return f"gpu_policy.{key} has the wrong type"
    return None


def _requirements(value: Any) -> str | None:
    problem = _keys_within(value, REQUIREMENT_KEYS)
    if problem:
        return problem
    checks: dict[str, Callable[[Any], bool]] = {
        "os_version": partial(is_exactly, kind=str),
        "platforms": _str_list,
        "tdx_measure_acpi_tables": partial(is_exactly, kind=bool),
        "launch_token_hash": lambda v: is_exactly(v, str) and HEX64.fullmatch(v) is not None,
    }
    for key, check in checks.items():
        if key in value and not check(value[key]):
            return f"{key} has the wrong type or form"
    return _gpu_policy(value["gpu_policy"]) if "gpu_policy" in value else None


def _verity_volumes(value: Any) -> str | None:
    if not is_exactly(value, list):
        return "a list"
    targets = set()
    for volume in value:
        if _keys_within(volume, {"source", "verity_root", "target"}) or len(volume) != 3:
            return "each volume is exactly {source, verity_root, target}"
        source, root, target = volume["source"], volume["verity_root"], volume["target"]
        if not (
            is_exactly(source, str)
            and is_exactly(root, str)
            and HEX64.fullmatch(root)
            and is_exactly(target, str)
        ):
            return "source and target are strings, verity_root 64 hex digits"
        if not target.startswith("/") or target in targets:
            return f"target {target!r} must be absolute and used once"
        targets.add(target)
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if is_exactly(v, str) and v in choices else f"one of {', '.join(choices)}"


def _of_type(kind: type) -> Callable[[Any], str | None]:
    return lambda v: None if is_exactly(v, kind) else json_type_name(kind)


def _typed(check: Callable[[Any], bool], what: str) -> Callable[[Any], str | None]:
    return lambda v: None if check(v) else what


VALIDATORS: Mapping[str, Callable[[Any], str | None]] = {
    "manifest_version": _version,
    "name": _of_type(str),
    "features": _typed(_str_list, "a list of strings"),
    "runner": _one_of(RUNNERS),
    "snapshotter": _one_of(SNAPSHOTTERS),
    "docker_compose_file": _of_type(str),
    "bash_script": _of_type(str),
    "init_script": _init_script,
    "pre_launch_script": _of_type(str),
    **{name: _of_type(bool) for name in BOOLEAN_DEFAULTS},
    "key_provider": _one_of(KEY_PROVIDERS),
    "key_provider_id": _typed(
        lambda v: is_exactly(v, str) and re.fullmatch(r"(0x)?([0-9a-fA-F]{2})*", v) is not None,
        "hex",
    ),
    "allowed_envs": _allowed_envs,
    "storage_fs": _of_type(str),
    "swap_size": _swap_size,
    "event_log_version": _typed(lambda v: is_exactly(v, int) and v in (1, 2), "1 or 2"),
    "port_policy": _port_policy,
    "requirements": _requirements,
    "verity_volumes": _verity_volumes,
    "docker_config": _of_type(dict),
}


def _cross_field_problems(document: Mapping[str, Any]) -> list[str]:
    problems = []
    for field in ("manifest_version", "name", "runner"):
        if field not in document:
            problems.append(f"missing required field {field!r}")
    runner = document.get("runner")
    if runner in ("docker-compose", "nerdctl-compose") and "docker_compose_file" not in document:
        problems.append(f"runner {runner} needs docker_compose_file")
    if runner == "bash" and "bash_script" not in document:
        problems.append("runner bash needs bash_script")
    if "snapshotter" in document and runner != "nerdctl-compose":
        problems.append("snapshotter is only for runner nerdctl-compose")
    if "requirements" in document and not is_exactly(document.get("manifest_version"), str):
        problems.append(
            'requirements need a string manifest_version (e.g. "3"), so older guests fail closed'
        )
    return problems


def schema_problems(document: Mapping[str, Any], *, allow_unknown: bool = False) -> list[str]:
    """Every way `document` breaks dstack HEAD's app-compose schema (empty when it is valid);
    fields it does not know are problems unless `allow_unknown`."""
    problems = []
    for field, value in document.items():
        validator = VALIDATORS.get(field)
        if validator is None:
            if not allow_unknown:
                problems.append(f"{field!r} is not an app-compose field dstack knows")
            continue
        problem = validator(value)
        if problem is not None:
            problems.append(f"{field}: {problem}")
    return problems + _cross_field_problems(document)


def effective_key_provider(document: Mapping[str, Any]) -> Any:
    """The key provider dstack uses: `key_provider`, else derived from the legacy flags."""
    if "key_provider" in document:
        return document["key_provider"]
    if document.get("kms_enabled") is True:
        return "kms"
    return "local" if document.get("local_key_provider_enabled") is True else "none"


def effective(document: Mapping[str, Any], field: str) -> Any:
    """The value dstack acts on: the field's own, else its default (absent when it has none)."""
    if field == "key_provider":
        return effective_key_provider(document)
    if field == "gateway_enabled":
        gateway, legacy = document.get("gateway_enabled"), document.get("tproxy_enabled")
        if gateway is True or legacy is True:
            return True
        return gateway if gateway is not None else False
    if field in document:
        return document[field]
    return DEFAULTS.get(field, ABSENT)


class _Absent:
    def __repr__(self) -> str:
        return "absent"


ABSENT: Any = _Absent()
