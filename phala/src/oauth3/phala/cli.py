"""`oauth3-phala`: render the manifest, check a deployment against it, deploy it to Phala Cloud.

Exit codes: 0 done (rendered, check OK, deployed and verified); 1 `check`: the deployment differs
in what matters; 2 usage, input or I/O error; 3 `deploy` refused before commit (nothing committed);
4 the Phala Cloud API failed or refused (401, 409, 465-468, timeouts, 5xx); 5 caught after commit
(the CVM was stopped); 6 oauth3-verify did not verify the running CVM; 7 on-chain KMS: the hash
passed every check and waits for your registration. Every error is one escaped line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from oauth3.verifier.cli_common import ClientArgumentParser
from oauth3.verifier.output import json_text, printable

from . import deploy_cli
from .api import ApiSettings, PhalaApiError, PhalaCloud
from .check import CheckReport, compare, deployed_app_compose
from .deploy import DeployFailed, DeployRefused, OnChainRegistrationNeeded
from .manifest import (
    DEFAULT_COMPOSE_OUT,
    KMS_CHOICES,
    ManifestError,
    Rendered,
    canonical_json,
    deploy_command,
    parse_images,
    render,
)
from .records import write_atomically

PROG = "oauth3-phala"
EXIT_NOT_OK = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_API = 4
EXIT_AFTER_COMMIT = 5
EXIT_NOT_VERIFIED = 6
EXIT_REGISTER = 7
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_INFO_BYTES = 4 * 1024 * 1024


class CommandError(Exception):
    """A one-line error with its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _write(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_atomically(Path(path), data)


def read_source(path: str) -> bytes:
    """A file's bytes, or stdin's for `-` (OSError propagates to the one error handler)."""
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def allowed_digests(values: list[str]) -> set[str]:
    """The --allow-pre-launch-script values, each a sha256."""
    digests = set()
    for value in values:
        if not SHA256.fullmatch(value.lower()):
            raise CommandError(f"--allow-pre-launch-script {printable(value)!r} is not 64 hex")
        digests.add(value.lower())
    return digests


def _summary(rendered: Rendered, out: str, compose_out: str | None, kms: str) -> dict[str, Any]:
    return {
        "app_compose": out,
        "app_compose_bytes": len(rendered.app_compose),
        "compose_hash": rendered.compose_hash.hex(),
        "app_id_without_kms": rendered.app_id_without_kms.hex(),
        "kms_enabled": bool(rendered.document.get("kms_enabled", False)),
        "docker_compose": compose_out,
        "deployable": not rendered.unfilled,
        "unfilled": list(rendered.unfilled),
        "phala_deploy": deploy_command(rendered, compose_out or DEFAULT_COMPOSE_OUT, kms),
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
    stream.write("".join(printable(line) + "\n" for line in lines))


def _render_main(args: argparse.Namespace, rendered: Rendered) -> None:
    out: str = args.output
    compose_out: str | None = args.compose_out
    if compose_out is None and out != "-":
        compose_out = str(Path(out).with_name(DEFAULT_COMPOSE_OUT))
    _write(out, rendered.app_compose)
    if compose_out is not None and rendered.docker_compose:
        _write(compose_out, rendered.docker_compose.encode())
    summary = _summary(rendered, out, compose_out if rendered.docker_compose else None, args.kms)
    stream = sys.stderr if out == "-" or compose_out == "-" else sys.stdout
    if args.json:
        stream.write(json_text(summary) + "\n")
    else:
        _print_summary(summary, stream)


def _parser() -> ClientArgumentParser:
    parser = ClientArgumentParser(
        prog=PROG, description="Render, check and deploy the Phala manifest."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=ClientArgumentParser
    )
    render_cmd = commands.add_parser("render", help="write the exact app-compose.json bytes")
    check_cmd = commands.add_parser(
        "check", help="compare a deployed app-compose with the manifest"
    )
    deploy_cmd = commands.add_parser("deploy", help="deploy to Phala Cloud, checked before commit")
    for sub in (render_cmd, check_cmd, deploy_cmd):
        sub.add_argument("manifest", help="the YAML manifest, e.g. deploy/phala-app.yaml")
        sub.add_argument(
            "--image",
            action="append",
            default=[],
            metavar="ROLE=NAME@sha256:HEX",
            help="fill the {{ROLE_image}} placeholder (repeatable)",
        )
    for sub in (check_cmd, deploy_cmd):
        sub.add_argument(
            "--allow-pre-launch-script",
            metavar="SHA256",
            action="append",
            default=[],
            help="accept a pre_launch_script with this sha256 (after reading it)",
        )
        sub.add_argument("--timeout", type=float, default=30.0, help="seconds per API request")
    render_cmd.add_argument(
        "-o", "--output", default="app-compose.json", help="where to write the bytes (- = stdout)"
    )
    render_cmd.add_argument(
        "--compose-out",
        metavar="FILE",
        help=f"also write docker_compose_file here (default {DEFAULT_COMPOSE_OUT} beside -o)",
    )
    render_cmd.add_argument("--kms", choices=KMS_CHOICES, default="phala", help="KMS to print")
    render_cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
    source = check_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("deployed", nargs="?", help="a saved app-compose.json or /Info JSON")
    source.add_argument("--cvm-id", help="fetch the deployed compose from the Phala Cloud API")
    source.add_argument("--url", help="fetch a dstack /Info JSON (tcb_info.app_compose) here")
    deploy_cli.add_arguments(deploy_cmd)
    return parser


async def _fetch_deployed(args: argparse.Namespace) -> bytes:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if args.cvm_id is not None:
            settings = ApiSettings.from_environment(os.environ, args.timeout)
            stored = await PhalaCloud(session, settings).compose_file(args.cvm_id)
            return canonical_json(stored)
        try:
            async with session.get(args.url, allow_redirects=False) as response:
                status = response.status
                body = await response.content.read(MAX_INFO_BYTES)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CommandError(f"cannot fetch {args.url}: {type(exc).__name__}") from None
        if status != 200:
            raise CommandError(f"{args.url}: HTTP {status}")
        return deployed_app_compose(body)


def _check_main(args: argparse.Namespace, rendered: Rendered) -> int:
    allowed = allowed_digests(args.allow_pre_launch_script)
    if args.deployed is not None:
        deployed = deployed_app_compose(read_source(args.deployed))
    else:
        deployed = asyncio.run(_fetch_deployed(args))
    report = compare(rendered, deployed, allowed)
    sys.stdout.write("\n".join(check_lines(report)) + "\n")
    return EXIT_NOT_OK if report.mattering else 0


def check_lines(report: CheckReport) -> list[str]:
    """What `check` prints: the deployed hash, each difference, the verdict."""
    digest = report.deployed_hash.hex()
    lines = [f"deployed compose_hash  {digest}", *(d.line() for d in report.differences)]
    if report.mattering:
        fields = ", ".join(dict.fromkeys(report.mattering))
        lines.append(f"NOT OK: the deployment differs from the manifest in what matters: {fields}")
    else:
        lines.append(
            "OK: the deployment runs the manifest's containers with the same keys and "
            f"visibility; verify with oauth3-verify URL --expect-compose-hash {digest}"
        )
    return lines


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        rendered = render(read_source(args.manifest), parse_images(args.image))
    except ManifestError as exc:
        raise CommandError(f"{args.manifest}: {exc}") from None
    if args.command == "render":
        _render_main(args, rendered)
        return 0
    if args.command == "check":
        return _check_main(args, rendered)
    return deploy_cli.run_deploy(args, rendered)


ERROR_CODES: Mapping[type[BaseException], int] = {
    CommandError: EXIT_USAGE,
    ManifestError: EXIT_USAGE,
    OSError: EXIT_USAGE,
    DeployRefused: EXIT_REFUSED,
    PhalaApiError: EXIT_API,
    DeployFailed: EXIT_AFTER_COMMIT,
    deploy_cli.NotVerified: EXIT_NOT_VERIFIED,
    OnChainRegistrationNeeded: EXIT_REGISTER,
}


def run(argv: list[str] | None = None) -> int:
    """Run the command and return its exit code; every exception, expected or not, becomes one
    escaped line on stderr and its documented code (never a traceback)."""
    try:
        return _run(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    except Exception as exc:  # the one place any failure becomes a line and an exit code
        code = next((c for t, c in ERROR_CODES.items() if isinstance(exc, t)), None)
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, CommandError):
            code = exc.code
        if isinstance(exc, OSError):
            detail = f"{exc.filename or ''}: {exc.strerror or type(exc).__name__}".lstrip(": ")
        elif code is None:
            detail = f"internal error ({type(exc).__name__}): {exc}"
        sys.stderr.write(f"{PROG}: {printable(' '.join(detail.split()))}\n")
        return code if code is not None else EXIT_USAGE


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of `oauth3-phala`."""
    raise SystemExit(run(argv))
