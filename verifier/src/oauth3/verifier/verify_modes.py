"""What `oauth3-verify` does once its arguments are parsed: read the inputs they name, run the mode
(URL, bundle, dstack quote, custom-domain evidences) and report. cli.py loads this only after
parsing, so --help and a misuse start without any of it."""

from __future__ import annotations

import argparse
import hashlib
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from oauth3.attestation import AttestationError, load_evidence, parse_nonce

from .bundle import LATEST_TIME, Bundle, load_bundle, parse_time, save_bundle
from .cli_common import InputTooLarge, read_input_bytes
from .collateral import load_collateral
from .files import write_atomically
from .network_defaults import DEFAULT_PCCS_URL
from .observed import observed_policy_text, written_note
from .output import json_text, render
from .policy import (
    PLATFORM_FIELDS,
    PlatformPin,
    Policy,
    PolicyError,
    key_provider_pin,
    load_policy,
    merge,
    platform_pin,
)
from .step_basics import Evidence, VerifyOptions
from .verdict import (
    Verdict,
    VerdictName,
    rfc3339,
)
from .verify_args import (
    PLATFORM_FLAGS,
    PROG,
    UsageError,
    check_usage,
    usage_error,
)

if TYPE_CHECKING:
    from .pipeline import CollateralSource


def _read_named_file(path: str) -> bytes:
    """A file's bytes (stdin for `-`), at most 64 MiB; otherwise a one-line usage error."""
    try:
        return read_input_bytes(path)
    except (OSError, InputTooLarge) as exc:
        usage_error(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")


def _hex_arg(text: str, option: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        usage_error(f"error: {option} is not hex")
    if len(value) != size:
        usage_error(f"error: {option} must be {size} bytes of hex")
    return value


def _nonce_arg(text: str) -> bytes | None:
    if text == "auto":
        return secrets.token_bytes(32)
    if text == "none":
        return None
    try:
        return parse_nonce(text)
    except AttestationError as exc:
        usage_error(f"error: --nonce: {exc}")


def _time_arg(text: str | None) -> int:
    if text is None or text == "now":
        return int(time.time())
    try:
        moment = parse_time(text)
    except (ValueError, OverflowError):
        usage_error(f"error: --at {text!r} is neither RFC 3339 nor unix seconds")
    if not 0 <= moment <= LATEST_TIME:
        usage_error(f"error: --at {text!r} is outside 1970..9999")
    return moment


def _policy(args: argparse.Namespace) -> Policy:
    base = load_policy(Path(args.policy)) if args.policy else Policy()
    platform_values = {
        name: getattr(args, f"pin_{name}")
        for name in PLATFORM_FLAGS
        if getattr(args, f"pin_{name}") is not None
    }
    platforms: tuple[PlatformPin, ...] = ()
    if platform_values:
        for name, value in platform_values.items():
            _hex_arg(value, PLATFORM_FLAGS[name], PLATFORM_FIELDS[name])
        platforms = (platform_pin(platform_values, "flags", name="given by flags"),)
    try:
        key_providers = frozenset(
            key_provider_pin(text, "--expect-key-provider") for text in args.expect_key_provider
        )
    except PolicyError as exc:
        usage_error(f"error: {exc}")
    pinned_by_flags = bool(
        platforms
        or args.expect_compose_hash
        or args.expect_app_id
        or args.expect_os_image_hash
        or key_providers
    )
    policy = merge(
        base,
        compose_hashes=frozenset(
            _hex_arg(h, "--expect-compose-hash", 32) for h in args.expect_compose_hash
        ),
        app_ids=frozenset(_hex_arg(h, "--expect-app-id", 20) for h in args.expect_app_id),
        key_providers=key_providers,
        platforms=platforms,
        os_image_hashes=frozenset(
            _hex_arg(h, "--expect-os-image-hash", 32) for h in args.expect_os_image_hash
        ),
        allowed_tcb=frozenset(args.allow_tcb),
        allowed_advisories=frozenset(args.allow_advisory),
        min_tcb_evaluation=args.min_tcb_evaluation,
        allow_dev_os=args.allow_dev_os,
    )
    if args.policy and pinned_by_flags:
        return replace(policy, source=f"{base.source} and flags")
    return policy


def _options(args: argparse.Namespace) -> VerifyOptions:
    policy = _policy(args)
    root = _read_named_file(args.root_ca) if args.root_ca else None
    pin = policy.simulated_root_sha256
    if root is not None and pin is not None and hashlib.sha256(root).digest() != pin:
        usage_error(f"error: --root-ca is not the root pinned by {policy.source}")
    return VerifyOptions(
        at=_time_arg(args.at),
        policy=policy,
        allow_simulated=args.allow_simulated,
        root_ca_der=root,
        skip_dcap=args.skip_dcap,
    )


def _write_policy(path: str, verdict: Verdict, options: VerifyOptions, subject: str) -> str:
    if verdict.verdict is VerdictName.FAILED:
        return f"policy NOT written to {path}: the verification failed"
    if not verdict.hardware_checked:
        return f"policy NOT written to {path}: the hardware was not checked"
    text = observed_policy_text(
        verdict, options.policy, f"{subject} at {rfc3339(int(time.time()))}"
    )
    try:
        write_atomically(Path(path), text.encode())
    except OSError as exc:
        usage_error(f"cannot write {path}: {exc.strerror or exc}")
    return written_note(path, verdict)


def _report(
    verdict: Verdict, subject: str, args: argparse.Namespace, out: TextIO, notes: list[str]
) -> int:
    if args.json:
        doc: dict[str, Any] = {"subject": subject, **verdict.as_json(), "notes": notes}
        out.write(json_text(doc) + "\n")
    else:
        out.write(render(verdict, subject, notes, PROG))
    return verdict.exit_code


def verify(args: argparse.Namespace, out: TextIO) -> int:
    """Check what the parsed arguments name, write the report to `out`, return the exit code.
    Raises VerifierError for unusable input (a file that is no quote included), OSError."""
    try:
        return _verify(args, out)
    except AttestationError as exc:  # the formats' word for input that is not what it claims
        raise UsageError(str(exc)) from None


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    check_usage(args)
    options = _options(args)
    from .pipeline import CollateralSource  # noqa: PLC0415 - it loads the steps; --help needs none

    collateral = load_collateral(_read_named_file(args.collateral)) if args.collateral else None
    source = CollateralSource(
        collateral=collateral,
        pccs_url=args.pccs or DEFAULT_PCCS_URL,
        pccs_given=args.pccs is not None,
    )
    if args.evidences is not None or args.evidences_dir is not None:
        verdict, subject, notes = _run_evidences(args, options, source)
    elif args.url is not None:
        verdict, subject, notes = _run_url(args, options, source)
    elif args.bundle is not None:
        verdict, subject, notes = _run_bundle(args, options, source)
    else:
        verdict, subject, notes = _run_quote_file(args, options, source)
    if args.write_policy is not None:
        notes.append(_write_policy(args.write_policy, verdict, options, subject))
    return _report(verdict, subject, args, out, notes)


# Each mode imports what only it uses (asyncio, the HTTP client, the evidences checks), so that
# the offline modes start without them.


def _run_url(
    args: argparse.Namespace, options: VerifyOptions, source: CollateralSource
) -> tuple[Verdict, str, list[str]]:
    import asyncio  # noqa: PLC0415 - see above

    from .pipeline import verify_url  # noqa: PLC0415 - see above

    nonce = _nonce_arg(args.nonce)
    verdict, fetched = asyncio.run(
        verify_url(
            args.url,
            options,
            source,
            nonce=nonce,
            batch=not args.no_batch,
            request_timeout=args.timeout,
        )
    )
    notes: list[str] = []
    if args.save_bundle is not None:
        try:
            save_bundle(Path(args.save_bundle), fetched)
        except OSError as exc:
            usage_error(f"cannot write {args.save_bundle}: {exc.strerror or exc}")
        notes.append(f"evidence saved to {args.save_bundle}")
    shown = f"nonce {nonce.hex()}" if nonce is not None else "no nonce"
    return verdict, f"{args.url} ({shown})", notes


def _run_bundle(
    args: argparse.Namespace, options: VerifyOptions, source: CollateralSource
) -> tuple[Verdict, str, list[str]]:
    from .pipeline import verify_bundle, verify_bundle_offline  # noqa: PLC0415 - see above

    bundle: Bundle = load_bundle(_read_named_file(args.bundle))
    checked = verify_bundle_offline(bundle, options, source)
    if checked is None:  # a PCCS to ask: the one case that needs an event loop
        import asyncio  # noqa: PLC0415 - see above

        checked = asyncio.run(verify_bundle(bundle, options, source, request_timeout=args.timeout))
    verdict = checked[0]
    note = (
        f"offline: evidence fetched at {rfc3339(bundle.fetched_at)} by the bundle's own "
        f"account, checked as of {rfc3339(options.at)}; freshness is not established"
    )
    return verdict, f"bundle {args.bundle} from {bundle.url}", [note]


def _run_quote_file(
    args: argparse.Namespace, options: VerifyOptions, source: CollateralSource
) -> tuple[Verdict, str, list[str]]:
    import asyncio  # noqa: PLC0415 - see above

    from .pipeline import verify_evidence  # noqa: PLC0415 - see above

    loaded = load_evidence(_read_named_file(args.dstack_quote))
    event_log = loaded.event_log
    if args.event_log is not None:
        event_log = _read_named_file(args.event_log).decode("utf-8", "replace")
    vm_config = loaded.document.get("vm_config") if loaded.document is not None else None
    evidence = Evidence(
        quote=loaded.quote,
        event_log=event_log,
        origin="quote_file",
        vm_config=vm_config if isinstance(vm_config, str) else None,
    )
    checking_quote = verify_evidence(evidence, options, source, request_timeout=args.timeout)
    verdict, _ = asyncio.run(checking_quote)
    return verdict, f"{loaded.kind} {args.dstack_quote}", []


def _run_evidences(
    args: argparse.Namespace, options: VerifyOptions, source: CollateralSource
) -> tuple[Verdict, str, list[str]]:
    import asyncio  # noqa: PLC0415 - see above

    from . import evidences, evidences_fetch  # noqa: PLC0415 - see above

    found = evidences_fetch.obtain_evidences(
        args.evidences,
        args.evidences_dir,
        domain=args.domain,
        connect_to=args.connect_to,
        ca_file=args.tls_ca,
        request_timeout=args.timeout,
    )
    checking = evidences.verify_evidences(found, options, source, request_timeout=args.timeout)
    verdict = asyncio.run(checking)
    return verdict, f"evidences {found.source} for {found.domain}", evidences.notes(found)
