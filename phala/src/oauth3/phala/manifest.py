"""The Phala Cloud app manifest: dstack's app-compose fields, validated, rendered to exact bytes.

Serialisation (the bytes are what the CVM hashes, so it is fixed): canonical JSON, keys sorted at
every level, no whitespace, UTF-8 without escaping, `null` fields dropped; the same bytes the dstack
SDK's `get_compose_hash` hashes, so its result equals the compose hash printed here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from oauth3.attestation import app_id_without_kms, compose_hash

PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)_image\s*\}\}")
PINNED_IMAGE = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
BOOLEAN_FIELDS = (
    "kms_enabled",
    "gateway_enabled",
    "tproxy_enabled",
    "public_logs",
    "public_sysinfo",
    "public_tcbinfo",
    "no_instance_id",
    "secure_time",
    "local_key_provider_enabled",
)
STRING_FIELDS = ("name", "runner", "docker_compose_file", "key_provider", "key_provider_id")
RUNNERS = ("docker-compose", "bash")
KEY_PROVIDERS = ("kms", "local", "none")
DEFAULT_COMPOSE_OUT = "docker-compose.phala.yml"
# fields whose change alters what runs, who holds the keys, or what the world can read
IMPORTANT_FIELDS = {
    "docker_compose_file": "another set of containers",
    "runner": "another way to start the app",
    "bash_script": "a script that runs the app",
    "init_script": "runs as root before the containers",
    "kms_enabled": "changes who derives the app's keys",
    "key_provider": "changes who derives the app's keys",
    "key_provider_id": "changes who derives the app's keys",
    "local_key_provider_enabled": "changes who derives the app's keys",
    "public_logs": "changes what anyone can read",
    "public_sysinfo": "changes what anyone can read",
    "public_tcbinfo": "changes what anyone can read",
}
HARMLESS_FIELDS = {
    "manifest_version": "format version",
    "name": "display name",
    "gateway_enabled": "routing through the dstack gateway",
    "tproxy_enabled": "routing through the dstack gateway (old name)",
    "secure_time": "time source at boot",
    "no_instance_id": "whether instances get distinct ids",
    "storage_fs": "file system of the data disk",
    "event_log_version": "RTMR3 digest format",
}


class ManifestError(ValueError):
    """The manifest or an --image value is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """The app-compose bytes, the docker-compose text inside them, and what is still unfilled."""

    app_compose: bytes
    docker_compose: str
    unfilled: tuple[str, ...]
    document: Mapping[str, Any]

    @property
    def compose_hash(self) -> bytes:
        """SHA-256 of the app-compose bytes (what the CVM extends into RTMR3)."""
        return compose_hash(self.app_compose)

    @property
    def app_id_without_kms(self) -> bytes:
        """The app id of a KMS-less deployment: the first 20 bytes of the compose hash."""
        return app_id_without_kms(self.compose_hash)


def _without_nulls(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(f"{where}: key {key!r} is not a string")
            if item is not None:
                out[key] = _without_nulls(item, f"{where}.{key}")
        return out
    if isinstance(value, list):
        return [_without_nulls(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, float):
        raise ManifestError(f"{where} is a float; app-compose holds no floats (no canonical form)")
    if isinstance(value, bool | int | str):
        return value
    raise ManifestError(f"{where} has unsupported type {type(value).__name__}")


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Sorted-key compact UTF-8 JSON without nulls, as dstack's get_compose_hash serialises."""
    clean = _without_nulls(dict(document), "manifest")
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_fields(document: Mapping[str, Any]) -> None:
    for field in ("manifest_version", "name", "runner"):
        if field not in document:
            raise ManifestError(f"missing required field {field!r}")
    version = document["manifest_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError("manifest_version must be a positive integer")
    for field in STRING_FIELDS:
        if field in document and not isinstance(document[field], str):
            raise ManifestError(f"{field} must be a string")
    for field in BOOLEAN_FIELDS:
        if field in document and not isinstance(document[field], bool):
            raise ManifestError(f"{field} must be true or false")
    if document["runner"] not in RUNNERS:
        raise ManifestError(f"runner must be one of {', '.join(RUNNERS)}")
    if document.get("key_provider", "kms") not in KEY_PROVIDERS:
        raise ManifestError(f"key_provider must be one of {', '.join(KEY_PROVIDERS)}")
    envs = document.get("allowed_envs", [])
    if not isinstance(envs, list) or not all(isinstance(e, str) for e in envs):
        raise ManifestError("allowed_envs must be a list of variable names")
    if document["runner"] == "docker-compose" and "docker_compose_file" not in document:
        raise ManifestError("runner docker-compose needs docker_compose_file")


def _check_images(docker_compose: str) -> None:
    try:
        compose = yaml.safe_load(docker_compose)
    except yaml.YAMLError as exc:
        raise ManifestError(f"docker_compose_file is not YAML: {_yaml_problem(exc)}") from None
    services = compose.get("services") if isinstance(compose, dict) else None
    if not isinstance(services, dict) or not services:
        raise ManifestError("docker_compose_file must define a services mapping")
    for name, service in services.items():
        image = service.get("image") if isinstance(service, dict) else None
        if not isinstance(image, str):
            raise ManifestError(f"service {name!r}: image must be given (pinned by digest)")
        if not PLACEHOLDER.fullmatch(image) and not PINNED_IMAGE.match(image):
            raise ManifestError(
                f"service {name!r}: image {image!r} is not pinned by digest (NAME@sha256:<64 hex>)"
            )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def parse_images(values: Sequence[str]) -> dict[str, str]:
    """`ROLE=NAME@sha256:HEX` pairs from --image; ManifestError when one is malformed."""
    images: dict[str, str] = {}
    for value in values:
        role, sep, image = value.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", role):
            raise ManifestError(f"--image {value!r}: expected ROLE=NAME@sha256:<64 hex>")
        if not PINNED_IMAGE.match(image):
            raise ManifestError(f"--image {role}: {image!r} is not pinned by digest")
        if role in images:
            raise ManifestError(f"--image {role} given twice")
        images[role] = image
    return images


def render(manifest: bytes, images: Mapping[str, str] | None = None) -> Rendered:
    """Validate a YAML manifest, fill image placeholders, and serialise it canonically."""
    try:
        document = yaml.safe_load(manifest)
    except yaml.YAMLError as exc:
        raise ManifestError(f"not YAML: {_yaml_problem(exc)}") from None
    if not isinstance(document, dict):
        raise ManifestError("the manifest must be a YAML mapping of app-compose fields")
    _check_fields(document)
    images = dict(images or {})
    docker_compose = str(document.get("docker_compose_file", ""))
    used = {match.group(1) for match in PLACEHOLDER.finditer(docker_compose)}
    unknown = sorted(set(images) - used)
    if unknown:
        raise ManifestError(f"--image {unknown[0]}: no {{{{{unknown[0]}_image}}}} in the manifest")
    if docker_compose:
        docker_compose = PLACEHOLDER.sub(
            lambda m: images.get(m.group(1), m.group(0)), docker_compose
        )
        _check_images(docker_compose)
        document["docker_compose_file"] = docker_compose
    unfilled = tuple(sorted(used - set(images)))
    return Rendered(canonical_json(document), docker_compose, unfilled, document)


def deploy_command(rendered: Rendered, compose_path: str) -> str:
    """The `phala deploy` invocation for this manifest (node and KMS ids left for the operator)."""
    parts = ["phala", "deploy", "--name", str(rendered.document["name"])]
    parts += ["--compose", compose_path, "--node-id", "<NODE_ID>"]
    if rendered.document.get("allowed_envs"):
        parts += ["--env-file", "<.env with " + ",".join(rendered.document["allowed_envs"]) + ">"]
    return " ".join(parts)
