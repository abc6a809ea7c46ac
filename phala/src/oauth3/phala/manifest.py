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

from oauth3.attestation import MAX_DEPTH, app_id_without_kms, compose_hash

from .schema import schema_problems

PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)_image\s*\}\}")
PINNED_IMAGE = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
DEFAULT_COMPOSE_OUT = "docker-compose.phala.yml"
KMS_CHOICES = ("phala", "ethereum", "base")


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
    """Sorted-key compact UTF-8 JSON without nulls, as dstack's get_compose_hash serialises;
    ManifestError when the document cannot be UTF-8."""
    clean = _without_nulls(dict(document), "manifest")
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ManifestError(
            "the manifest holds a lone surrogate, which UTF-8 cannot carry"
        ) from None


def _check_fields(document: Mapping[str, Any]) -> None:
    problems = schema_problems(document)
    if problems:
        raise ManifestError(problems[0])


def _check_images(docker_compose: str) -> None:
    compose = _load_yaml(docker_compose, "docker_compose_file is not YAML")
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


def _load_yaml(text: bytes | str, refusal: str) -> Any:
    """yaml.safe_load; ManifestError starting with `refusal` when it is not YAML or nests deeper
    than MAX_DEPTH (PyYAML's composer recurses, and so do the walks after it)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{refusal}: {_yaml_problem(exc)}") from None
    except RecursionError:
        document = None
        depth = MAX_DEPTH + 1
    else:
        depth = _depth(document)
    if depth > MAX_DEPTH:
        raise ManifestError(f"{refusal}: it nests deeper than {MAX_DEPTH} levels")
    return document


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value`, walked without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list) and level < MAX_DEPTH + 1:
            deepest = max(deepest, level + 1)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


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
    document = _load_yaml(manifest, "not YAML")
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


def deploy_command(rendered: Rendered, compose_path: str, kms: str = "phala") -> str:
    """A `phala deploy` line a user can paste: the production OS (`--no-dev-os`, so the CLI adds
    no SSH key), the KMS named, each allowed variable as `-e KEY=VALUE` (never `--env-file`)."""
    parts = ["phala", "deploy", "--name", str(rendered.document["name"])]
    parts += ["--compose", compose_path, "--node-id", "<NODE_ID>", "--no-dev-os", "--kms", kms]
    for name in rendered.document.get("allowed_envs", []):
        parts += ["-e", f"{name}=<value>"]
    return " ".join(parts)
