"""Settings declared once, in the shape a settings library gives them: each a dataclass field that
carries its environment variable, default, bounds and help, read from the environment in one pass.

    port: int = env_field(integer("OAUTH3_PORT", 8080, 0, 65535, "TCP port of the API"))

A group used by several roles (connection limits, log buffering) is a dataclass of its own whose
variables are suffixes; each role nests it under its prefix with `nested`. Cross-field rules go in
the settings class's `__post_init__`, raising ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_SETTING = "oauth3.setting"
_NESTED = "oauth3.nested"


class ConfigError(ValueError):
    """A setting holds an invalid value; the message names its variable."""


@dataclass(frozen=True, slots=True)
class Setting(Generic[T]):
    """One environment variable: its name (or suffix, in a nested group), its default, what it is
    for, and how its text becomes a value (ValueError saying what is wrong otherwise).
    `fallback` computes the default from the environment when the variable is unset."""

    env: str
    default: T
    description: str
    parse: Callable[[str], T]
    fallback: Callable[[Mapping[str, str]], T] | None = None

    def read(self, env: Mapping[str, str], prefix: str = "") -> T:
        """The value of `prefix + env` in `env`; unset or empty gives the default."""
        name = prefix + self.env
        raw = env.get(name)
        if raw is None or raw == "":
            return self.default if self.fallback is None else self.fallback(env)
        return self.parse_from(raw, name)

    def parse_from(self, raw: str, origin: str) -> T:
        """The value of `raw`, which came from `origin` (a variable or an option that errors
        name)."""
        try:
            return self.parse(raw)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{origin} {exc}") from None


def _number(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if math.isnan(value) or not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {raw!r}")
        return value

    return parse


def number(env: str, default: float, low: float, high: float, description: str) -> Setting[float]:
    """A number within [low, high]."""
    return Setting(env, default, description, _number(low, high))


def integer(env: str, default: int, low: int, high: int, description: str) -> Setting[int]:
    """A whole number within [low, high]."""
    as_number = _number(low, high)

    def parse(raw: str) -> int:
        value = as_number(raw)
        if value != int(value):
            raise ValueError(f"must be a whole number, got {raw!r}")
        return int(value)

    return Setting(env, default, description, parse)


def text(env: str, default: str, description: str) -> Setting[str]:
    """Any text."""
    return Setting(env, default, description, str)


def path(env: str, default: Path, description: str) -> Setting[Path]:
    """A filesystem path."""
    return Setting(env, default, description, Path)


def choice(env: str, default: str, choices: tuple[str, ...], description: str) -> Setting[str]:
    """One of `choices`."""

    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return Setting(env, default, description, parse)


def flag(env: str, description: str) -> Setting[bool]:
    """1/true or 0/false (default false)."""

    def parse(raw: str) -> bool:
        if raw not in ("0", "1", "true", "false"):
            raise ValueError(f"must be 1 or 0, got {raw!r}")
        return raw in ("1", "true")

    return Setting(env, False, description, parse)


def file_mode(env: str, default: int, description: str) -> Setting[int]:
    """An octal permission mode such as 660."""

    def parse(raw: str) -> int:
        try:
            mode = int(raw, 8)
        except ValueError:
            mode = 0
        if not 0 < mode <= 0o777:
            raise ValueError(f"must be an octal file mode like 660, got {raw!r}")
        return mode

    return Setting(env, default, description, parse)


def env_field(setting: Setting[T]) -> T:
    """The dataclass field declaring `setting` (its default is the setting's)."""
    return dataclasses.field(default=setting.default, metadata={_SETTING: setting})


def nested(group: type[T], prefix: str) -> T:
    """A dataclass field holding a group of settings whose variables are `prefix` + suffix."""
    return dataclasses.field(default_factory=group, metadata={_NESTED: (group, prefix)})


def read_settings(cls: type[T], env: Mapping[str, str], prefix: str = "") -> T:
    """An instance of the settings dataclass `cls` from `env`: each declared setting read, each
    nested group read under its prefix, other fields left at their defaults. ConfigError names
    the first invalid variable (or the rule `__post_init__` found broken)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _SETTING in field.metadata:
            values[field.name] = field.metadata[_SETTING].read(env, prefix)
        elif _NESTED in field.metadata:
            group, group_prefix = field.metadata[_NESTED]
            values[field.name] = read_settings(group, env, prefix + group_prefix)
    return cls(**values)


def declared(cls: type[Any], prefix: str = "") -> Iterator[tuple[str, Setting[Any]]]:
    """Every variable `cls` reads, with its declaration, in field order (for help and docs)."""
    for field in dataclasses.fields(cls):
        if _SETTING in field.metadata:
            setting: Setting[Any] = field.metadata[_SETTING]
            yield prefix + setting.env, setting
        elif _NESTED in field.metadata:
            group, group_prefix = field.metadata[_NESTED]
            yield from declared(group, prefix + group_prefix)
