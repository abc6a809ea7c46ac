"""Simulator configuration: command-line options over OAUTH3_SIM_* variables, read once in main."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import cast

from oauth3.attestation.tcb import TCB_STATUSES, TcbStatus
from oauth3.runtime.env_settings import ConfigError, read_settings
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.logs import valid_level

from .mockdcap import MockDcapOptions
from .state import (
    ATTACKS,
    EVENT_LOG_FORMATS,
    OS_RELEASE_MODES,
    CvmVariant,
    EventLogFormat,
    OsReleaseMode,
)

DEFAULT_SEED = "oauth3-simulator"
DEFAULT_APP_COMPOSE = "default-app-compose.json"
MAX_UNIX_PATH_BYTES = 107
MAX_LATENCY_MS = 600_000

# option name -> environment variable, in the order `--help` lists them
ENVIRONMENT = {
    "socket": "OAUTH3_SIM_SOCKET",
    "app_compose": "OAUTH3_SIM_APP_COMPOSE",
    "seed": "OAUTH3_SIM_SEED",
    "event_log": "OAUTH3_SIM_EVENT_LOG",
    "quote_latency_ms": "OAUTH3_SIM_QUOTE_LATENCY_MS",
    "fail_rate": "OAUTH3_SIM_FAIL_RATE",
    "stall_rate": "OAUTH3_SIM_STALL_RATE",
    "wrong_report_data_rate": "OAUTH3_SIM_WRONG_REPORT_DATA_RATE",
    "dcap_dir": "OAUTH3_SIM_DCAP_DIR",
    "pccs_port": "OAUTH3_SIM_PCCS_PORT",
    "tcb_status": "OAUTH3_SIM_TCB_STATUS",
    "advisory_ids": "OAUTH3_SIM_ADVISORY_IDS",
    "revoked_pck": "OAUTH3_SIM_REVOKED_PCK",
    "collateral_validity_s": "OAUTH3_SIM_COLLATERAL_VALIDITY_S",
    "runtime_events": "OAUTH3_SIM_RUNTIME_EVENTS",
    "kms": "OAUTH3_SIM_KMS",
    "os_release": "OAUTH3_SIM_OS_RELEASE",
    "emit_event": "OAUTH3_SIM_EMIT_EVENTS",
    "attack": "OAUTH3_SIM_ATTACKS",
    "log_level": "OAUTH3_LOG_LEVEL",
}
MAX_EMITTED_EVENTS = 64


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """Everything the simulator needs; `app_compose` holds the exact bytes it measures."""

    socket: Path
    app_compose: bytes
    app_compose_source: str = DEFAULT_APP_COMPOSE
    seed: str = DEFAULT_SEED
    event_log: EventLogFormat = "full"
    quote_latency_ms: int = 0
    fail_rate: float = 0.0
    stall_rate: float = 0.0
    wrong_report_data_rate: float = 0.0
    dcap_dir: Path | None = None
    pccs_port: int = 0
    log_level: str = "info"
    log_buffering: Buffering = field(default_factory=Buffering)
    dcap: MockDcapOptions = field(default_factory=MockDcapOptions)
    variant: CvmVariant = field(default_factory=CvmVariant)
    socket_mode: int = 0o666
    stall_seconds: float = 3600.0

    def __post_init__(self) -> None:
        rates = (self.fail_rate, self.stall_rate, self.wrong_report_data_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ConfigError("fault rates must be fractions between 0 and 1")
        if sum(rates) > 1.0 + 1e-9:
            raise ConfigError(
                "fail, stall and wrong-report-data rates are exclusive outcomes; "
                f"their sum must not exceed 1 (got {sum(rates):g})"
            )
        if not 0 <= self.quote_latency_ms <= MAX_LATENCY_MS:
            raise ConfigError(f"quote latency must be 0-{MAX_LATENCY_MS} ms")
        if not 0 <= self.pccs_port <= 65535:
            raise ConfigError("PCCS port must be 0 (off) or 1-65535")
        if len(os.fsencode(self.socket)) > MAX_UNIX_PATH_BYTES:
            raise ConfigError(
                f"socket path is {len(os.fsencode(self.socket))} bytes; unix sockets allow "
                f"{MAX_UNIX_PATH_BYTES}"
            )


def parser(prog: str, parser_class: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The command-line interface; each option's default is its environment variable."""
    cli = parser_class(
        prog=prog,
        description="A dstack guest agent (dstack.sock) whose quotes, event log and Info agree.",
    )
    env = ENVIRONMENT
    cli.add_argument("--socket", metavar="PATH", help=f"unix socket to serve [{env['socket']}]")
    cli.add_argument(
        "--app-compose",
        metavar="FILE",
        help=f"app-compose.json to measure (default: oauth3's own) [{env['app_compose']}]",
    )
    cli.add_argument("--seed", help=f"derives every measurement and key [{env['seed']}]")
    cli.add_argument(
        "--event-log",
        choices=EVENT_LOG_FORMATS,
        help=f"GetQuote's event-log format: full (OS <= 0.5.5) or stripped [{env['event_log']}]",
    )
    cli.add_argument(
        "--quote-latency-ms",
        metavar="N",
        help=f"time each quote takes, serialised [{env['quote_latency_ms']}]",
    )
    cli.add_argument(
        "--fail-rate", metavar="F", help=f"fraction of quotes answered 500 [{env['fail_rate']}]"
    )
    cli.add_argument(
        "--stall-rate",
        metavar="F",
        help=f"fraction of quote requests that hang for an hour [{env['stall_rate']}]",
    )
    cli.add_argument(
        "--wrong-report-data-rate",
        metavar="F",
        help="fraction of quotes over other report_data than requested "
        f"[{env['wrong_report_data_rate']}]",
    )
    cli.add_argument(
        "--dcap-dir",
        metavar="DIR",
        help=f"write root-ca.der and collateral.json of the mock DCAP PKI here [{env['dcap_dir']}]",
    )
    cli.add_argument(
        "--pccs-port",
        metavar="N",
        help=f"serve the mock PCCS on 127.0.0.1:N, 0 = off [{env['pccs_port']}]",
    )
    cli.add_argument(
        "--tcb-status",
        choices=TCB_STATUSES,
        help=f"TCB status of the mock platform (default UpToDate) [{env['tcb_status']}]",
    )
    cli.add_argument(
        "--advisory-ids",
        metavar="IDS",
        help=f"comma-separated advisories on that TCB level [{env['advisory_ids']}]",
    )
    cli.add_argument(
        "--revoked-pck",
        action="store_const",
        const="1",
        help=f"list the PCK certificate in the PCK CRL [{env['revoked_pck']}=1]",
    )
    cli.add_argument(
        "--collateral-validity-s",
        metavar="N",
        help="seconds the collateral stays valid after start (default 30 days) "
        f"[{env['collateral_validity_s']}]",
    )
    cli.add_argument(
        "--runtime-events",
        choices=("1", "2"),
        help=f"RTMR3 digest format: 1 (OS 0.5) or 2 (JCS, OS 0.6) [{env['runtime_events']}]",
    )
    cli.add_argument(
        "--kms",
        action="store_const",
        const="1",
        help="boot with a simulated KMS, as Phala Cloud production does: os-image-hash, a KMS "
        f"key-provider and a registered app id in RTMR3 [{env['kms']}=1]",
    )
    cli.add_argument(
        "--os-release",
        choices=OS_RELEASE_MODES,
        help="simulated (default): boot a simulated OS release the dstack 0.6 lite way, its "
        "measurement document in vm_config; none: a dstack 0.5.5 host naming an unpublished "
        f"image by hash only [{env['os_release']}]",
    )
    cli.add_argument(
        "--emit-event",
        metavar="NAME=HEX",
        action="append",
        help="an event the app emitted after boot (repeatable) "
        f"[{env['emit_event']}, comma-separated]",
    )
    cli.add_argument(
        "--attack",
        choices=ATTACKS,
        action="append",
        help="play an attack a verifier must refuse (repeatable) "
        f"[{env['attack']}, comma-separated]",
    )
    cli.add_argument("--log-level", help=f"debug, info or warning [{env['log_level']}]")
    cli.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 if a simulator answers on the socket, 1 otherwise",
    )
    return cli


def _pick(args: argparse.Namespace, env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """The raw value and where it came from: the option wins over the environment."""
    value = getattr(args, name)
    if value is not None:
        return value, "--" + name.replace("_", "-")
    variable = ENVIRONMENT[name]
    if env.get(variable):
        return env[variable], variable
    return None


def _fraction(raw: tuple[str, str] | None) -> float:
    if raw is None:
        return 0.0
    value, origin = raw
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{origin} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{origin} must be between 0 and 1, got {value!r}")
    return number


def _integer(raw: tuple[str, str] | None, low: int, high: int) -> int:
    if raw is None:
        return 0
    value, origin = raw
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{origin} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{origin} must be between {low} and {high}, got {value!r}")
    return number


def _dcap_options(args: argparse.Namespace, env: Mapping[str, str]) -> MockDcapOptions:
    status = _pick(args, env, "tcb_status")
    if status is not None and status[0] not in TCB_STATUSES:
        raise ConfigError(
            f"{status[1]} must be one of {', '.join(TCB_STATUSES)}, got {status[0]!r}"
        )
    advisories = _pick(args, env, "advisory_ids")
    revoked = _pick(args, env, "revoked_pck")
    if revoked is not None and revoked[0] not in ("0", "1", "true", "false"):
        raise ConfigError(f"{revoked[1]} must be 1 or 0, got {revoked[0]!r}")
    validity = _integer(_pick(args, env, "collateral_validity_s"), 0, 10 * 365 * 86_400)
    return MockDcapOptions(
        tcb_status=cast(TcbStatus, status[0]) if status is not None else "UpToDate",
        advisory_ids=tuple(a for a in (advisories[0] if advisories else "").split(",") if a),
        revoked_pck=revoked is not None and revoked[0] in ("1", "true"),
        validity=timedelta(seconds=validity) if validity else timedelta(days=30),
    )


def _listed(args: argparse.Namespace, env: Mapping[str, str], name: str) -> list[tuple[str, str]]:
    """Values of a repeatable option (or its comma-separated variable), each with its origin."""
    given = getattr(args, name)
    if given:
        return [(value, "--" + name.replace("_", "-")) for value in given]
    variable = ENVIRONMENT[name]
    return [(v.strip(), variable) for v in env.get(variable, "").split(",") if v.strip()]


def _variant(args: argparse.Namespace, env: Mapping[str, str]) -> CvmVariant:
    attacks = []
    for value, origin in _listed(args, env, "attack"):
        if value not in ATTACKS:
            raise ConfigError(f"{origin}: {value!r} is not one of {', '.join(ATTACKS)}")
        attacks.append(value)
    emitted = []
    for value, origin in _listed(args, env, "emit_event"):
        name, sep, payload = value.partition("=")
        try:
            decoded = bytes.fromhex(payload)
        except ValueError:
            decoded = None
        if not sep or not name or decoded is None:
            raise ConfigError(f"{origin}: {value!r} is not NAME=HEX")
        emitted.append((name, decoded))
    if len(emitted) > MAX_EMITTED_EVENTS:
        raise ConfigError(f"at most {MAX_EMITTED_EVENTS} emitted events")
    version = _pick(args, env, "runtime_events")
    if version is not None and version[0] not in ("1", "2"):
        raise ConfigError(f"{version[1]} must be 1 or 2, got {version[0]!r}")
    kms = _pick(args, env, "kms")
    if kms is not None and kms[0] not in ("0", "1", "true", "false"):
        raise ConfigError(f"{kms[1]} must be 1 or 0, got {kms[0]!r}")
    release = _pick(args, env, "os_release")
    if release is not None and release[0] not in OS_RELEASE_MODES:
        raise ConfigError(
            f"{release[1]} must be one of {', '.join(OS_RELEASE_MODES)}, got {release[0]!r}"
        )
    return CvmVariant(
        attacks=frozenset(attacks),
        emitted=tuple(emitted),
        runtime_event_version=2 if version is not None and version[0] == "2" else 1,
        kms=kms is not None and kms[0] in ("1", "true"),
        os_release=cast(OsReleaseMode, release[0]) if release is not None else "simulated",
    )


def default_app_compose() -> bytes:
    """The packaged app-compose describing oauth3 itself (sidecar + service)."""
    return resources.files("oauth3.simulator").joinpath(DEFAULT_APP_COMPOSE).read_bytes()


def from_args(args: argparse.Namespace, env: Mapping[str, str]) -> SimulatorSettings:
    """Validate options and environment into settings; ConfigError names the first bad value."""
    socket_raw = _pick(args, env, "socket")
    if socket_raw is None:
        raise ConfigError(f"a socket path is required (--socket or {ENVIRONMENT['socket']})")
    compose_raw = _pick(args, env, "app_compose")
    if compose_raw is None:
        app_compose, source = default_app_compose(), DEFAULT_APP_COMPOSE
    else:
        source = compose_raw[0]
        try:
            app_compose = Path(source).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{compose_raw[1]}: cannot read {source}: {exc.strerror or exc}"
            ) from None
    event_log = _pick(args, env, "event_log")
    if event_log is not None and event_log[0] not in EVENT_LOG_FORMATS:
        raise ConfigError(f"{event_log[1]} must be full or stripped, got {event_log[0]!r}")
    dcap_dir = _pick(args, env, "dcap_dir")
    log_level = _pick(args, env, "log_level")
    seed = _pick(args, env, "seed")
    try:
        return SimulatorSettings(
            socket=Path(socket_raw[0]),
            app_compose=app_compose,
            app_compose_source=source,
            seed=seed[0] if seed is not None else DEFAULT_SEED,
            event_log=cast(EventLogFormat, event_log[0]) if event_log is not None else "full",
            quote_latency_ms=_integer(_pick(args, env, "quote_latency_ms"), 0, MAX_LATENCY_MS),
            fail_rate=_fraction(_pick(args, env, "fail_rate")),
            stall_rate=_fraction(_pick(args, env, "stall_rate")),
            wrong_report_data_rate=_fraction(_pick(args, env, "wrong_report_data_rate")),
            dcap_dir=Path(dcap_dir[0]) if dcap_dir is not None else None,
            pccs_port=_integer(_pick(args, env, "pccs_port"), 0, 65535),
            log_level=valid_level(log_level[0]) if log_level is not None else "info",
            log_buffering=read_settings(Buffering, env, "OAUTH3_"),
            dcap=_dcap_options(args, env),
            variant=_variant(args, env),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
