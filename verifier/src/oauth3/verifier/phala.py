"""`oauth3-phala`: render the Phala Cloud manifest to the exact app-compose.json bytes a CVM hashes.

Serialisation (the bytes are what the CVM hashes, so it is fixed): canonical JSON, keys sorted at
every level, no whitespace, UTF-8 without escaping, `null` fields dropped; the same bytes the dstack
SDK's `get_compose_hash` hashes, so its result equals the compose hash printed here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from oauth3.attestation import app_id_without_kms, compose_hash
from oauth3.verifier.commandline import OneLineParser, fail
from oauth3.verifier.output import printable

PROG = "oauth3-phala"
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


def _write(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        fail(f"{PROG}: cannot write {path}: {exc.strerror or exc}")


def _read(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        fail(f"{PROG}: cannot read {path}: {exc.strerror or exc}")


def _summary(rendered: Rendered, out: str, compose_out: str | None) -> dict[str, Any]:
    return {
        "app_compose": out,
        "app_compose_bytes": len(rendered.app_compose),
        "compose_hash": rendered.compose_hash.hex(),
        "app_id_without_kms": rendered.app_id_without_kms.hex(),
        "kms_enabled": bool(rendered.document.get("kms_enabled", False)),
        "docker_compose": compose_out,
        "deployable": not rendered.unfilled,
        "unfilled": list(rendered.unfilled),
        "phala_deploy": deploy_command(rendered, compose_out or DEFAULT_COMPOSE_OUT),
    }


def _print_summary(summary: Mapping[str, Any], stream: Any) -> None:
    app_id_note = "(KMS-less; with KMS the platform assigns the app id)"
    lines = [
        f"app-compose   {summary['app_compose']} ({summary['app_compose_bytes']} bytes)",
        f"compose_hash  {summary['compose_hash']}",
        f"app_id        {summary['app_id_without_kms']}  {app_id_note}",
    ]
    if summary["docker_compose"]:
        lines.append(f"compose file  {summary['docker_compose']}")
    lines.append(f"deploy        {summary['phala_deploy']}")
    lines.append(
        "verify        oauth3-verify URL --expect-compose-hash <hash of the DEPLOYED app-compose; "
        "Phala Cloud rebuilds it, see `oauth3-phala check`>"
    )
    if summary["unfilled"]:
        roles = ", ".join(summary["unfilled"])
        lines.append(f"NOT DEPLOYABLE: fill --image for {roles} (ROLE=NAME@sha256:<64 hex>)")
    stream.write("\n".join(lines) + "\n")


def _deployed_app_compose(raw: bytes) -> bytes:
    """The app-compose bytes from a saved app-compose.json or a dstack /Info response."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManifestError("deployed app-compose: not JSON") from None
    if isinstance(document, dict) and "tcb_info" in document:
        tcb_info = document["tcb_info"]
        if isinstance(tcb_info, str):
            try:
                tcb_info = orjson.loads(tcb_info)
            except orjson.JSONDecodeError:
                raise ManifestError("deployed /Info: tcb_info is not JSON") from None
        app_compose = tcb_info.get("app_compose") if isinstance(tcb_info, dict) else None
        if not isinstance(app_compose, str):
            raise ManifestError("deployed /Info: tcb_info.app_compose is missing")
        return app_compose.encode()
    if not isinstance(document, dict) or "docker_compose_file" not in document:
        raise ManifestError("deployed app-compose: no docker_compose_file field")
    return raw


def _shown(document: Mapping[str, Any], field: str) -> str:
    if field not in document:
        return "absent"
    text = printable(orjson.dumps(document[field]).decode())
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class Difference:
    """One field where the deployed app-compose differs from ours, and whether it matters."""

    field: str
    ours: str
    deployed: str
    matters: bool
    why: str

    def line(self) -> str:
        """One line for the report."""
        mark = "MATTERS" if self.matters else "note   "
        return f"  {mark}  {self.field}: ours {self.ours}, deployed {self.deployed} ({self.why})"


def _judge_script(script: Any, allowed_scripts: set[str]) -> tuple[bool, str]:
    digest = hashlib.sha256(str(script or "").encode()).hexdigest()
    if script and digest in allowed_scripts:
        return False, f"sha256 {digest} allowed by you"
    return True, (
        f"runs as root before the containers; sha256 {digest}: read it, then allow it with "
        f"--allow-pre-launch-script {digest}"
    )


def _judge_envs(mine: Any, theirs: Any) -> tuple[bool, str]:
    extra = sorted(set(theirs or []) - set(mine or []))
    if not extra:
        return False, "fewer variables than ours"
    return True, f"the operator may set {', '.join(extra)} at deploy time"


def _judge(field: str, mine: Any, theirs: Any, allowed_scripts: set[str]) -> tuple[bool, str]:
    """Whether a changed field matters, and why."""
    if field == "pre_launch_script":
        return _judge_script(theirs, allowed_scripts)
    if field == "allowed_envs":
        return _judge_envs(mine, theirs)
    known = {
        **{name: (True, why) for name, why in IMPORTANT_FIELDS.items()},
        **{name: (False, why) for name, why in HARMLESS_FIELDS.items()},
    }
    return known.get(field, (True, "a field oauth3 does not know to be harmless"))


def compare(
    rendered: Rendered, deployed_raw: bytes, allowed_scripts: set[str] | None = None
) -> tuple[list[Difference], bytes]:
    """Every field where the deployed app-compose differs from ours, each judged, and the
    deployed compose hash."""
    deployed_bytes = _deployed_app_compose(deployed_raw)
    deployed = orjson.loads(deployed_bytes)
    ours = orjson.loads(rendered.app_compose)
    if not isinstance(deployed, dict):
        raise ManifestError("deployed app-compose: not a JSON object")
    differences = [
        Difference(
            field,
            _shown(ours, field),
            _shown(deployed, field),
            *_judge(field, ours.get(field), deployed.get(field), allowed_scripts or set()),
        )
        for field in sorted(set(ours) | set(deployed))
        if ours.get(field) != deployed.get(field)
    ]
    return differences, compose_hash(deployed_bytes)


def _parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Render and check the Phala Cloud manifest.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    render_cmd = commands.add_parser("render", help="write the exact app-compose.json bytes")
    check_cmd = commands.add_parser(
        "check", help="compare a deployed app-compose (or /Info) with the manifest"
    )
    for sub in (render_cmd, check_cmd):
        sub.add_argument("manifest", help="the YAML manifest, e.g. deploy/phala-app.yaml")
        sub.add_argument(
            "--image",
            action="append",
            default=[],
            metavar="ROLE=NAME@sha256:HEX",
            help="fill the {{ROLE_image}} placeholder (repeatable)",
        )
    render_cmd.add_argument(
        "-o", "--output", default="app-compose.json", help="where to write the bytes (- = stdout)"
    )
    render_cmd.add_argument(
        "--compose-out",
        metavar="FILE",
        help=f"also write docker_compose_file here (default {DEFAULT_COMPOSE_OUT} beside -o)",
    )
    render_cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
    check_cmd.add_argument("deployed", help="deployed app-compose.json or a dstack /Info JSON")
    check_cmd.add_argument(
        "--allow-pre-launch-script",
        metavar="SHA256",
        action="append",
        default=[],
        help="accept a deployed pre_launch_script with this sha256 (after reading it)",
    )
    return parser


def _render_main(args: argparse.Namespace, rendered: Rendered) -> None:
    out: str = args.output
    compose_out: str | None = args.compose_out
    if compose_out is None and out != "-":
        compose_out = str(Path(out).with_name(DEFAULT_COMPOSE_OUT))
    _write(out, rendered.app_compose)
    if compose_out is not None and rendered.docker_compose:
        _write(compose_out, rendered.docker_compose.encode())
    summary = _summary(rendered, out, compose_out if rendered.docker_compose else None)
    stream = sys.stderr if out == "-" or compose_out == "-" else sys.stdout
    if args.json:
        stream.write(orjson.dumps(summary).decode() + "\n")
    else:
        _print_summary(summary, stream)


def _check_main(args: argparse.Namespace, rendered: Rendered) -> None:
    allowed = set()
    for value in args.allow_pre_launch_script:
        digest = value.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ManifestError(f"--allow-pre-launch-script {value!r} is not a sha256 (64 hex)")
        allowed.add(digest)
    differences, deployed_hash = compare(rendered, _read(args.deployed), allowed)
    lines = [f"deployed compose_hash  {deployed_hash.hex()}"]
    lines += [d.line() for d in differences]
    mattering = [d.field for d in differences if d.matters]
    if mattering:
        lines.append(
            "NOT OK: the deployment differs from the manifest in what matters: "
            + ", ".join(mattering)
        )
        sys.stdout.write("\n".join(lines) + "\n")
        raise SystemExit(1)
    lines.append(
        "OK: the deployment runs the manifest's containers with the same keys and visibility; "
        f"verify with oauth3-verify URL --expect-compose-hash {deployed_hash.hex()}"
    )
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `oauth3-phala` (render | check); bad input is one line on stderr, exit 2."""
    args = _parser().parse_args(argv)
    try:
        rendered = render(_read(args.manifest), parse_images(args.image))
        if args.command == "render":
            _render_main(args, rendered)
        else:
            _check_main(args, rendered)
    except ManifestError as exc:
        fail(f"{PROG}: {args.manifest}: {exc}")


if __name__ == "__main__":
    main()
