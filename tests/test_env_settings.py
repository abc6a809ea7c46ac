"""Settings declared once: each role's variables come from their declarations (name, default,
bounds, description), shared ones are the same declaration, and the README names them all."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from oauth3.runtime.env_settings import (
    ConfigError,
    declared,
    env_field,
    integer,
    nested,
    read_settings,
)
from oauth3.runtime.serve import Limits
from oauth3.service.settings import ServiceSettings
from oauth3.sidecar.settings import SidecarSettings

README = Path(__file__).resolve().parent.parent / "README.md"
ROLES = (ServiceSettings, SidecarSettings)


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_is_declared_once_with_a_description(role: type) -> None:
    names = [name for name, _ in declared(role)]
    assert len(names) == len(set(names))
    assert all(setting.description for _, setting in declared(role))


@pytest.mark.parametrize("role", ROLES)
def test_the_defaults_are_the_declarations(role: type) -> None:
    """Settings built in code and settings read from an empty environment are the same (no
    default written twice); the agent socket's default depends on the machine, so it is left out."""
    from_env = dataclasses.asdict(read_settings(role, {}))
    in_code = dataclasses.asdict(role())
    for values in (from_env, in_code):
        values.pop("agent_socket", None)
    assert from_env == in_code


def test_the_roles_share_the_sidecar_contract_and_log_declarations() -> None:
    service, sidecar = dict(declared(ServiceSettings)), dict(declared(SidecarSettings))
    shared = {"OAUTH3_SIDECAR_SOCKET", "OAUTH3_SIDECAR_QUEUE_SIZE", "OAUTH3_LOG_LEVEL"}
    assert shared <= service.keys() & sidecar.keys()
    assert all(service[name] is sidecar[name] for name in shared)


def test_the_readme_names_every_variable() -> None:
    text = README.read_text()
    missing = [name for role in ROLES for name, _ in declared(role) if f"`{name}`" not in text]
    assert missing == []


@dataclasses.dataclass(frozen=True)
class _Example:
    size: int = env_field(integer("SIZE", 3, 1, 9, "a size"))
    limits: Limits = nested(Limits, "EX_")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIZE": "ten"}, "SIZE must be a number, got 'ten'"),
        ({"SIZE": "10"}, "SIZE must be between 1 and 9"),
        ({"SIZE": "2.5"}, "SIZE must be a whole number"),
        ({"EX_MAX_CONNECTIONS": "0"}, "EX_MAX_CONNECTIONS must be between"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_settings(_Example, env)


def test_nested_groups_read_under_their_prefix() -> None:
    example = read_settings(_Example, {"SIZE": "", "EX_KEEPALIVE_TIMEOUT": "2.5"})
    assert example.size == 3
    assert example.limits.keepalive_timeout == 2.5
    assert [name for name, _ in declared(_Example)] == [
        "SIZE",
        "EX_KEEPALIVE_TIMEOUT",
        "EX_MAX_CONNECTIONS",
    ]


def test_the_simulator_declares_each_option_once() -> None:
    """Its options and variables come from one table; the log level is the runtime's own."""
    from oauth3.runtime.cli import OneLineParser  # noqa: PLC0415 - the simulator's part only
    from oauth3.runtime.logs import LOG_LEVEL  # noqa: PLC0415
    from oauth3.simulator.settings import OPTIONS, parser  # noqa: PLC0415

    variables = [setting.env for setting in OPTIONS.values()]
    assert len(variables) == len(set(variables))
    assert all(setting.description for setting in OPTIONS.values())
    assert OPTIONS["log_level"] is LOG_LEVEL
    help_text = parser("oauth3-simulator", OneLineParser).format_help()
    assert all(variable in help_text for variable in variables)
