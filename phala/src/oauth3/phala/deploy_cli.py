"""`oauth3-phala deploy`'s options, and its last step: oauth3-verify on the running CVM, pinned
to the compose hash committed, the app id and the OS release provisioned (see `os_pin`)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from oauth3.verifier.cli import run as run_verifier
from oauth3.verifier.output import printable
from oauth3.verifier.policy import Policy, PolicyError, load_policy

from .api import ApiSettings, PhalaCloud
from .check import official_prelaunch_scripts
from .deploy import DeployPlan, deploy
from .manifest import KMS_CHOICES, ManifestError, Rendered
from .os_pin import pinning_line, verify_pins
from .records import policy_text, write_atomically, write_record

ENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
# Phala's rule for CVM names (provision_cvm.ts): a hostname label of 5-63 characters
CVM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{3,61}[A-Za-z0-9]")


class NotVerified(Exception):
    """oauth3-verify did not verify the running CVM; the message carries its verdict."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The deploy subcommand's options."""
    parser.add_argument("--name", required=True, help="the CVM name on Phala Cloud")
    parser.add_argument("--node-id", type=int, help="the node to deploy on")
    parser.add_argument("--instance-type", help="e.g. tdx.small")
    parser.add_argument("--kms", choices=KMS_CHOICES, default="phala", help="which KMS")
    parser.add_argument("-e", dest="env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env-file", metavar="FILE", help="KEY=VALUE lines")
    parser.add_argument("--pre-launch-script", metavar="FILE", help="sent as pre_launch_script")
    parser.add_argument("--allow-os-image", action="append", default=[], metavar="HASH")
    parser.add_argument("--kms-signer", metavar="0xKEY", help="require this KMS signer")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="your oauth3-verify policy: what it pins is checked before commit, and the verify "
        "step uses it (its [[platform]] pins admit an OS release without a measurement document)",
    )
    parser.add_argument("--cvm-id", help="update this CVM instead of creating one")
    parser.add_argument("--out", default="deployment.json", help="the deployment record")
    parser.add_argument("--policy-out", default="oauth3-policy.toml", help="the policy written")
    parser.add_argument("--no-verify", action="store_true", help="skip only oauth3-verify")
    parser.add_argument("--verify-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--app-url", help="the URL oauth3-verify checks (default: the API's)")
    parser.add_argument("--wait-timeout", type=float, default=900.0, help="seconds to run")
    parser.add_argument("--poll-interval", type=float, default=2.0, help=argparse.SUPPRESS)


def read_envs(args: argparse.Namespace, rendered: Rendered) -> dict[str, str]:
    """-e and --env-file values; each key must be one the manifest allows."""
    lines = list(args.env)
    if args.env_file:
        text = Path(args.env_file).read_text()
        lines += [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    envs: dict[str, str] = {}
    allowed = set(rendered.document.get("allowed_envs", []))
    for line in lines:
        match = ENV_LINE.fullmatch(line)
        if match is None:
            raise ManifestError("an environment value is not KEY=VALUE")
        if match.group(1) not in allowed:
            raise ManifestError(f"{match.group(1)} is not in the manifest's allowed_envs")
        envs[match.group(1)] = match.group(2)
    return envs


def _script(args: argparse.Namespace, allowed: set[str]) -> str | None:
    if args.pre_launch_script is None:
        return None
    script = Path(args.pre_launch_script).read_bytes()
    digest = hashlib.sha256(script).hexdigest()
    if digest not in allowed and digest not in official_prelaunch_scripts():
        raise ManifestError(
            f"--pre-launch-script sha256 {digest} is neither Phala's official script nor "
            "allowed (--allow-pre-launch-script)"
        )
    return script.decode()


def read_policy(path: str | None) -> Policy | None:
    """The --policy file, parsed (ManifestError when it is not a policy)."""
    if path is None:
        return None
    try:
        return load_policy(Path(path))
    except PolicyError as exc:
        raise ManifestError(f"--policy {exc}") from None


def make_plan(args: argparse.Namespace, rendered: Rendered, allowed: set[str]) -> DeployPlan:
    """The plan from the command line (ManifestError on bad values)."""
    if not CVM_NAME.fullmatch(args.name):
        raise ManifestError("--name: 5-63 letters, digits or hyphens, starting with a letter")
    if rendered.unfilled:
        raise ManifestError(f"fill --image for {', '.join(rendered.unfilled)} before deploying")
    images = set()
    for value in args.allow_os_image:
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", value):
            raise ManifestError("--allow-os-image takes a 64-hex os_image_hash")
        images.add(bytes.fromhex(value.removeprefix("0x")))
    return DeployPlan(
        rendered=rendered,
        policy=read_policy(args.policy),
        verify=not args.no_verify,
        name=args.name,
        envs=read_envs(args, rendered),
        kms=args.kms,
        node_id=args.node_id,
        instance_type=args.instance_type,
        pre_launch_script=_script(args, allowed),
        allowed_os_images=frozenset(images),
        kms_signer=args.kms_signer,
        cvm_id=args.cvm_id,
        out=Path(args.out),
        poll_s=args.poll_interval,
        wait_s=args.wait_timeout,
    )


def verify_argv(
    record: Mapping[str, Any], url: str, extra: list[str], policy: tuple[str, Policy] | None = None
) -> list[str]:
    """oauth3-verify's argv: your policy (path, parsed) if given, the deployment's pins
    (`os_pin.verify_pins`), JSON out, the URL last (after `--`, so no URL is read as an option)."""
    given = ["--policy", policy[0]] if policy else []
    pins = verify_pins(record, policy[1] if policy else None)
    return [*given, *pins, *extra, "--json", "--", url]


def verify_running(
    record: Mapping[str, Any], url: str, extra: list[str], policy: tuple[str, Policy] | None = None
) -> list[str]:
    """Run oauth3-verify in-process on the CVM; what it verified, or NotVerified. Its verdict
    covers the OS: pinned by release, the platform step passes only when the quote's MRTD and
    RTMR0-2 are what the provisioned release boots to."""
    out = io.StringIO()
    code = run_verifier(verify_argv(record, url, extra, policy), out)
    try:
        report = json.loads(out.getvalue())
    except ValueError:
        raise NotVerified(f"oauth3-verify gave no report (exit {code})") from None
    verdict = printable(str(report.get("verdict", f"exit {code}")))
    if code != 0:
        failed = [s for s in report.get("steps", []) if isinstance(s, dict) and not s.get("ok")]
        why = printable(str(failed[0].get("reason", ""))) if failed else ""
        why = why or printable(str(report.get("error", "")))
        raise NotVerified(f"oauth3-verify refused the running CVM ({verdict}, exit {code}) {why}")
    return [f"{verdict} (exit 0)", pinning_line(record)]


def run_deploy(args: argparse.Namespace, rendered: Rendered) -> int:
    """The deploy command: the flow, the verification, the record and the policy."""
    from .cli import allowed_digests  # noqa: PLC0415 - the CLI module imports this one

    plan = make_plan(args, rendered, allowed_digests(args.allow_pre_launch_script))
    settings = ApiSettings.from_environment(os.environ, args.timeout)

    def say(line: str) -> None:
        print(line, flush=True)

    async def flow() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            return await deploy(PhalaCloud(session, settings), plan, say)

    record = asyncio.run(flow())
    url = args.app_url or record.get("app_url")
    if args.no_verify:
        say("NOT VERIFIED: --no-verify skipped oauth3-verify on the running CVM")
    elif not isinstance(url, str) or not url:
        raise NotVerified("no URL to verify: the API gave none; pass --app-url")
    else:
        given = (args.policy, plan.policy) if args.policy and plan.policy else None
        for line in verify_running(record, url, args.verify_arg, given):
            say(f"verified   {line}")
    write_record(plan.out, record)
    write_atomically(Path(args.policy_out), policy_text(record).encode())
    say(f"wrote      {plan.out} and {args.policy_out}")
    return 0
