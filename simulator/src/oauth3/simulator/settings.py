"""Simulator configuration: command-line options over OAUTH3_SIM_* variables, read once in main;
each declared once in OPTIONS (variable, default, bounds, description), its option derived."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

from oauth3.attestation.tcb import TCB_STATUSES, TcbStatus
from oauth3.runtime.env_settings import (
    ConfigError,
    Setting,
    choice,
    flag,
    integer,
    number,
    read_settings,
    text,
)
from oauth3.runtime.logbuffer import Buffering
from oauth3.runtime.logs import LOG_LEVEL

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
MAX_EMITTED_EVENTS = 64
T = TypeVar("T")


def _emitted_event(text: str) -> tuple[str, bytes]:
    name, sep, payload = text.partition("=")
    try:
        decoded = bytes.fromhex(payload)
    except ValueError:
        decoded = None
    if not sep or not name or decoded is None:
        raise ValueError(f"{text!r} is not NAME=HEX")
    return name, decoded


def _attack(text: str) -> str:
    if text not in ATTACKS:
        raise ValueError(f"{text!r} is not one of {', '.join(ATTACKS)}")
    return text


def _listed(parse_item: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    """A comma-separated list, each item parsed (a repeated option joins its values so)."""

    def parse(raw: str) -> tuple[T, ...]:
        return tuple(parse_item(item.strip()) for item in raw.split(",") if item.strip())

    return parse


# option name -> its setting (variable, default, bounds, description), in the order `--help`
# lists them; the option is `--name-with-dashes` and wins over the variable
OPTIONS: dict[str, Setting[Any]] = {
    "socket": Setting("OAUTH3_SIM_SOCKET", None, "unix socket to serve", Path),
    "app_compose": Setting(
        "OAUTH3_SIM_APP_COMPOSE", None, "app-compose.json to measure (default: oauth3's own)", str
    ),
    "seed": text("OAUTH3_SIM_SEED", DEFAULT_SEED, "derives every measurement and key"),
    "event_log": choice(
        "OAUTH3_SIM_EVENT_LOG",
        "full",
        EVENT_LOG_FORMATS,
        "GetQuote's event-log format: full (OS <= 0.5.5) or stripped",
    ),
    "quote_latency_ms": integer(
        "OAUTH3_SIM_QUOTE_LATENCY_MS", 0, 0, MAX_LATENCY_MS, "time each quote takes, serialised"
    ),
    "fail_rate": number("OAUTH3_SIM_FAIL_RATE", 0.0, 0, 1, "fraction of quotes answered 500"),
    "stall_rate": number(
        "OAUTH3_SIM_STALL_RATE", 0.0, 0, 1, "fraction of quote requests that hang for an hour"
    ),
    "wrong_report_data_rate": number(
        "OAUTH3_SIM_WRONG_REPORT_DATA_RATE",
        0.0,
        0,
        1,
        "fraction of quotes over other report_data than requested",
    ),
    "dcap_dir": Setting(
        "OAUTH3_SIM_DCAP_DIR",
        None,
        "write root-ca.der and collateral.json of the mock DCAP PKI here",
        Path,
    ),
    "pccs_port": integer(
        "OAUTH3_SIM_PCCS_PORT", 0, 0, 65535, "serve the mock PCCS on 127.0.0.1:N, 0 = off"
    ),
    "tcb_status": choice(
        "OAUTH3_SIM_TCB_STATUS", "UpToDate", TCB_STATUSES, "TCB status of the mock platform"
    ),
    "advisory_ids": Setting(
        "OAUTH3_SIM_ADVISORY_IDS", (), "comma-separated advisories on that TCB level", _listed(str)
    ),
    "revoked_pck": flag("OAUTH3_SIM_REVOKED_PCK", "list the PCK certificate in the PCK CRL"),
    "collateral_validity_s": integer(
        "OAUTH3_SIM_COLLATERAL_VALIDITY_S",
        30 * 86_400,
        1,
        10 * 365 * 86_400,
        "seconds the collateral stays valid after start (default 30 days)",
    ),
    "runtime_events": choice(
        "OAUTH3_SIM_RUNTIME_EVENTS",
        "1",
        ("1", "2"),
        "RTMR3 digest format: 1 (OS 0.5) or 2 (JCS, OS 0.6)",
    ),
    "kms": flag(
        "OAUTH3_SIM_KMS",
        "boot with a simulated KMS, as Phala Cloud production does: os-image-hash, a KMS "
        "key-provider and a registered app id in RTMR3",
    ),
    "os_release": choice(
        "OAUTH3_SIM_OS_RELEASE",
        "simulated",
        OS_RELEASE_MODES,
        "simulated (default): boot a simulated OS release the dstack 0.6 lite way, its "
        "measurement document in vm_config; none: a dstack 0.5.5 host naming an unpublished "
        "image by hash only",
    ),
    "emit_event": Setting(
        "OAUTH3_SIM_EMIT_EVENTS",
        (),
        "an event the app emitted after boot (repeatable; the variable: comma-separated)",
        _listed(_emitted_event),
    ),
    "attack": Setting(
        "OAUTH3_SIM_ATTACKS",
        (),
        "play an attack a verifier must refuse (repeatable; the variable: comma-separated)",
        _listed(_attack),
    ),
    "log_level": LOG_LEVEL,
}
# how each option is given on the command line, where it is not `--name VALUE`
_SHAPES: dict[str, dict[str, Any]] = {
    "socket": {"metavar": "PATH"},
    "app_compose": {"metavar": "FILE"},
    "event_log": {"choices": EVENT_LOG_FORMATS},
    "quote_latency_ms": {"metavar": "N"},
    "fail_rate": {"metavar": "F"},
    "stall_rate": {"metavar": "F"},
    "wrong_report_data_rate": {"metavar": "F"},
    "dcap_dir": {"metavar": "DIR"},
    "pccs_port": {"metavar": "N"},
    "tcb_status": {"choices": TCB_STATUSES},
    "advisory_ids": {"metavar": "IDS"},
    "revoked_pck": {"action": "store_const", "const": "1"},
    "collateral_validity_s": {"metavar": "N"},
    "runtime_events": {"choices": ("1", "2")},
    "kms": {"action": "store_const", "const": "1"},
    "os_release": {"choices": OS_RELEASE_MODES},
    "emit_event": {"metavar": "NAME=HEX", "action": "append"},
    "attack": {"choices": ATTACKS, "action": "append"},
}
ENVIRONMENT = {name: setting.env for name, setting in OPTIONS.items()}


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
    for name, setting in OPTIONS.items():
        shape = _SHAPES.get(name, {})
        shown = f"{setting.env}=1" if shape.get("action") == "store_const" else setting.env
        option = "--" + name.replace("_", "-")
        cli.add_argument(option, help=f"{setting.description} [{shown}]", **shape)
    cli.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 if a simulator answers on the socket, 1 otherwise",
    )
    return cli


def _value(args: argparse.Namespace, env: Mapping[str, str], name: str) -> Any:
    """An option's value: from the command line when given, else from its variable."""
    setting = OPTIONS[name]
    given = getattr(args, name)
    if given is None:
        return setting.read(env)
    raw = ",".join(given) if isinstance(given, list) else given
    return setting.parse_from(raw, "--" + name.replace("_", "-"))


def _dcap_options(args: argparse.Namespace, env: Mapping[str, str]) -> MockDcapOptions:
    return MockDcapOptions(
        tcb_status=cast(TcbStatus, _value(args, env, "tcb_status")),
        advisory_ids=_value(args, env, "advisory_ids"),
        revoked_pck=_value(args, env, "revoked_pck"),
        validity=timedelta(seconds=_value(args, env, "collateral_validity_s")),
    )


def _variant(args: argparse.Namespace, env: Mapping[str, str]) -> CvmVariant:
    emitted = _value(args, env, "emit_event")
    if len(emitted) > MAX_EMITTED_EVENTS:
        raise ConfigError(f"at most {MAX_EMITTED_EVENTS} emitted events")
    return CvmVariant(
        attacks=frozenset(_value(args, env, "attack")),
        emitted=emitted,
        runtime_event_version=2 if _value(args, env, "runtime_events") == "2" else 1,
        kms=_value(args, env, "kms"),
        os_release=cast(OsReleaseMode, _value(args, env, "os_release")),
    )


def default_app_compose() -> bytes:
    """The packaged app-compose describing oauth3 itself (sidecar + service)."""
    return resources.files("oauth3.simulator").joinpath(DEFAULT_APP_COMPOSE).read_bytes()


def _app_compose(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[bytes, str]:
    """The app-compose bytes to measure and where they came from."""
    source = _value(args, env, "app_compose")
    if source is None:
        return default_app_compose(), DEFAULT_APP_COMPOSE
    try:
        return Path(source).read_bytes(), source
    except OSError as exc:
        origin = "--app-compose" if args.app_compose else ENVIRONMENT["app_compose"]
        raise ConfigError(f"{origin}: cannot read {source}: {exc.strerror or exc}") from None


def from_args(args: argparse.Namespace, env: Mapping[str, str]) -> SimulatorSettings:
    """Validate options and environment into settings; ConfigError names the first bad value."""
    socket = _value(args, env, "socket")
    if socket is None:
        raise ConfigError(f"a socket path is required (--socket or {ENVIRONMENT['socket']})")
    app_compose, source = _app_compose(args, env)
    try:
        return SimulatorSettings(
            socket=socket,
            app_compose=app_compose,
            app_compose_source=source,
            seed=_value(args, env, "seed"),
            event_log=cast(EventLogFormat, _value(args, env, "event_log")),
            quote_latency_ms=_value(args, env, "quote_latency_ms"),
            fail_rate=_value(args, env, "fail_rate"),
            stall_rate=_value(args, env, "stall_rate"),
            wrong_report_data_rate=_value(args, env, "wrong_report_data_rate"),
            dcap_dir=_value(args, env, "dcap_dir"),
            pccs_port=_value(args, env, "pccs_port"),
            log_level=_value(args, env, "log_level"),
            log_buffering=read_settings(Buffering, env, "OAUTH3_"),
            dcap=_dcap_options(args, env),
            variant=_variant(args, env),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
