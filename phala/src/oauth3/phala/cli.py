"""`oauth3-phala`: render the manifest, check a deployment against it."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from oauth3.verifier.commandline import OneLineParser, fail

from .check import compare
from .manifest import (
    DEFAULT_COMPOSE_OUT,
    ManifestError,
    Rendered,
    deploy_command,
    parse_images,
    render,
)

PROG = "oauth3-phala"


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
