"""The relying party's policy: which apps, platforms, TCB statuses and advisories it accepts.

Kept in a commented TOML file (`--policy FILE`), or given as flags; `--write-policy FILE` writes
what one verification observed, for the relying party to review and keep. The format is strict:
an unknown key, a value of the wrong size or a platform entry without its four required
registers is an error naming the key, never a silently weaker policy.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from oauth3.attestation.tcb import TCB_STATUSES

from .errors import VerifierError

POLICY_FORMAT = 1
DEFAULT_ALLOWED_TCB = frozenset({"UpToDate"})
# pin name -> size in bytes; the first four must all be pinned for the platform to be pinned
PLATFORM_FIELDS: Mapping[str, int] = {
    "mrtd": 48,
    "rtmr0": 48,
    "rtmr1": 48,
    "rtmr2": 48,
    "mrseam": 48,
    "xfam": 8,
    "td_attributes": 8,
    "min_tee_tcb_svn": 16,
}
# [os] keys of the three ACPI digests RTMR0 measures (all or none), by dstack's event name
ACPI_KEYS: Mapping[str, str] = {
    "loader": "acpi_loader_sha384",
    "rsdp": "acpi_rsdp_sha384",
    "tables": "acpi_tables_sha384",
}
REQUIRED_PLATFORM_FIELDS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")
# a pin compared with a differently named measurement (a minimum, not an exact value)
MEASURED_NAMES: Mapping[str, str] = {"min_tee_tcb_svn": "tee_tcb_svn"}
PLATFORM_LABELS: Mapping[str, str] = {
    "mrtd": "MRTD",
    "rtmr0": "RTMR0",
    "rtmr1": "RTMR1",
    "rtmr2": "RTMR2",
    "mrseam": "MRSEAM",
    "xfam": "XFAM",
    "td_attributes": "TD attributes",
    "min_tee_tcb_svn": "TEE TCB SVN minima",
}


# dstack's key providers (KeyProviderInfo names) and whether each carries an id
KEY_PROVIDER_IDS: Mapping[str, bool] = {"kms": True, "local-sgx": True, "tpm": False, "none": False}


class PolicyError(VerifierError, ValueError):
    """A policy file or pin flag is malformed; the message names the key (exit code 2)."""


@dataclass(frozen=True, slots=True, order=True)
class KeyProvider:
    """Where a dstack OS got its keys, as its RTMR3 `key-provider` event names it: a KMS by its
    root public key, a local SGX key provider by its measurement, or none/tpm (no id)."""

    name: str
    provider_id: bytes = b""

    @property
    def payload(self) -> bytes:
        """The exact `key-provider` event payload dstack measures for this provider."""
        return json.dumps(
            {"name": self.name, "id": self.provider_id.hex()}, separators=(",", ":")
        ).encode()

    def __str__(self) -> str:
        return f"{self.name}:{self.provider_id.hex()}"


def key_provider_pin(text: object, where: str) -> KeyProvider:
    """A key provider given as `NAME:HEX` (e.g. `kms:3059…`, `none:`); PolicyError otherwise."""
    if not isinstance(text, str):
        raise PolicyError(f"{where} must be a string NAME:HEX")
    name, colon, hex_id = text.partition(":")
    if not colon or name not in KEY_PROVIDER_IDS:
        raise PolicyError(
            f"{where} must be NAME:HEX with NAME one of {', '.join(KEY_PROVIDER_IDS)}"
        )
    if any(c not in "0123456789abcdefABCDEF" for c in hex_id) or len(hex_id) % 2:
        raise PolicyError(f"{where}: the id after {name}: is not hex")
    if hex_id and not KEY_PROVIDER_IDS[name]:
        raise PolicyError(f"{where}: key provider {name} has no id (write it as {name}:)")
    if not hex_id and KEY_PROVIDER_IDS[name]:
        raise PolicyError(f"{where}: key provider {name} needs an id")
    return KeyProvider(name, bytes.fromhex(hex_id))


def measured_key_provider(payload: bytes | None) -> KeyProvider | None:
    """The provider a measured `key-provider` payload names, when it is exactly dstack's
    serialisation of a known one (anything else can never match a pin)."""
    if payload is None:
        return None
    try:
        document = json.loads(payload)
        provider = key_provider_pin(f"{document['name']}:{document['id']}", "key-provider")
    except (ValueError, TypeError, KeyError, PolicyError):
        return None
    return provider if provider.payload == payload else None


@dataclass(frozen=True, slots=True)
class PlatformPin:
    """One accepted platform: exact registers, and optionally the TDX module and TD shape."""

    name: str = ""
    values: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Required registers this pin leaves open (then the platform is not pinned)."""
        return [PLATFORM_LABELS[f] for f in REQUIRED_PLATFORM_FIELDS if f not in self.values]

    def mismatches(self, measured: Mapping[str, bytes]) -> list[str]:
        """Each pinned value the measurement breaks, named; empty when all hold."""
        wrong = []
        for key, pinned in self.values.items():
            found = measured.get(MEASURED_NAMES.get(key, key))
            if key == "min_tee_tcb_svn":
                if found is None or any(f < p for f, p in zip(found, pinned, strict=True)):
                    shown = found.hex() if found is not None else "absent"
                    wrong.append(f"TEE TCB SVN {shown} is below the minima {pinned.hex()}")
            elif found != pinned:
                shown = found.hex()[:16] + "…" if found is not None else "absent"
                wrong.append(f"{PLATFORM_LABELS[key]} {shown} != pinned {pinned.hex()[:16]}…")
        return wrong


@dataclass(frozen=True, slots=True)
class Policy:
    """What the relying party accepts; empty sets mean "nothing pinned", never "anything"."""

    compose_hashes: frozenset[bytes] = frozenset()
    app_ids: frozenset[bytes] = frozenset()
    key_providers: frozenset[KeyProvider] = frozenset()
    platforms: tuple[PlatformPin, ...] = ()
    allowed_tcb: frozenset[str] = DEFAULT_ALLOWED_TCB
    allowed_advisories: frozenset[str] = frozenset()
    min_tcb_evaluation: int | None = None
    allow_dev_os: bool = False
    os_image_hashes: frozenset[bytes] = frozenset()
    acpi_digests: Mapping[str, bytes] = field(default_factory=dict)
    simulated_root_sha256: bytes | None = None
    source: str = "command-line flags"


def _hex(value: object, key: str, size: int | None) -> bytes:
    if not isinstance(value, str):
        raise PolicyError(f"{key} must be a hex string")
    try:
        decoded = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise PolicyError(f"{key} is not hex") from None
    if size is not None and len(decoded) != size:
        raise PolicyError(f"{key} must be {size} bytes, got {len(decoded)}")
    if size is None and not decoded:
        raise PolicyError(f"{key} is empty")
    return decoded


def _table(doc: Mapping[str, Any], key: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"[{key}] must be a table")
    _no_unknown(value, allowed, f"[{key}]")
    return value


def _no_unknown(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r}")


def _list(table: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise PolicyError(f"{where}.{key} must be a list")
    return value


def _hex_set(table: Mapping[str, Any], key: str, where: str, size: int | None) -> frozenset[bytes]:
    return frozenset(
        _hex(item, f"{where}.{key}[{i}]", size) for i, item in enumerate(_list(table, key, where))
    )


def _strings(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    items = _list(table, key, where)
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise PolicyError(f"{where}.{key}[{index}] must be a non-empty string")
    return items


def tcb_statuses(values: Iterable[str], where: str) -> frozenset[str]:
    """Validated TCB status names; PolicyError naming the first unknown one."""
    statuses = frozenset(values)
    unknown = sorted(statuses - set(TCB_STATUSES))
    if unknown:
        raise PolicyError(
            f"{where}: {unknown[0]!r} is not a TCB status ({', '.join(TCB_STATUSES)})"
        )
    return statuses


def platform_pin(values: Mapping[str, Any], where: str, name: str = "") -> PlatformPin:
    """A platform pin from hex strings keyed by PLATFORM_FIELDS; PolicyError on a bad value."""
    _no_unknown(values, [*PLATFORM_FIELDS, "name"], where)
    decoded = {
        key: _hex(values[key], f"{where}.{key}", size)
        for key, size in PLATFORM_FIELDS.items()
        if values.get(key) is not None
    }
    label = values.get("name", name)
    if not isinstance(label, str):
        raise PolicyError(f"{where}.name must be a string")
    if not decoded:
        raise PolicyError(f"{where} pins nothing")
    return PlatformPin(name=label, values=decoded)


def _acpi_pins(os_table: Mapping[str, Any]) -> dict[str, bytes]:
    given = {name: os_table[key] for name, key in ACPI_KEYS.items() if key in os_table}
    if given and len(given) != len(ACPI_KEYS):
        raise PolicyError(f"[os] pins {len(given)} of the 3 ACPI digests: pin all three or none")
    return {name: _hex(v, f"[os].{ACPI_KEYS[name]}", 48) for name, v in given.items()}


def parse_policy(text: str, source: str) -> Policy:
    """Read a policy document (TOML); PolicyError names the first problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise PolicyError("not a policy: its arrays or tables nest too deeply") from None
    _no_unknown(doc, ["format", "app", "platform", "tcb", "os", "simulated"], "policy")
    if doc.get("format") != POLICY_FORMAT:
        raise PolicyError(f"format must be {POLICY_FORMAT}, got {doc.get('format')!r}")
    app = _table(doc, "app", ["compose_hashes", "app_ids", "key_providers"])
    tcb = _table(
        doc, "tcb", ["allowed_statuses", "allowed_advisories", "min_evaluation_data_number"]
    )
    os_table = _table(doc, "os", ["allow_dev", "image_hashes", *ACPI_KEYS.values()])
    simulated = _table(doc, "simulated", ["root_ca_sha256"])
    platforms_raw = doc.get("platform", [])
    if not isinstance(platforms_raw, list):
        raise PolicyError("platform must be an array of tables ([[platform]])")
    platforms = []
    for index, entry in enumerate(platforms_raw):
        where = f"platform[{index}]"
        if not isinstance(entry, dict):
            raise PolicyError(f"{where} must be a table")
        pin = platform_pin(entry, where)
        if pin.missing:
            raise PolicyError(f"{where} lacks {', '.join(pin.missing)} (all four are required)")
        platforms.append(pin)
    allow_dev = os_table.get("allow_dev", False)
    if not isinstance(allow_dev, bool):
        raise PolicyError("[os].allow_dev must be true or false")
    root = simulated.get("root_ca_sha256")
    statuses = tcb.get("allowed_statuses")
    minimum = tcb.get("min_evaluation_data_number")
    if minimum is not None and (not isinstance(minimum, int) or isinstance(minimum, bool)):
        raise PolicyError("[tcb].min_evaluation_data_number must be an integer")
    return Policy(
        compose_hashes=_hex_set(app, "compose_hashes", "[app]", 32),
        app_ids=_hex_set(app, "app_ids", "[app]", 20),
        key_providers=frozenset(
            key_provider_pin(item, f"[app].key_providers[{index}]")
            for index, item in enumerate(_list(app, "key_providers", "[app]"))
        ),
        platforms=tuple(platforms),
        allowed_tcb=(
            tcb_statuses(_strings(tcb, "allowed_statuses", "[tcb]"), "[tcb].allowed_statuses")
            if statuses is not None
            else DEFAULT_ALLOWED_TCB
        ),
        allowed_advisories=frozenset(_strings(tcb, "allowed_advisories", "[tcb]")),
        min_tcb_evaluation=minimum,
        allow_dev_os=allow_dev,
        os_image_hashes=_hex_set(os_table, "image_hashes", "[os]", 32),
        acpi_digests=_acpi_pins(os_table),
        simulated_root_sha256=(
            _hex(root, "[simulated].root_ca_sha256", 32) if root is not None else None
        ),
        source=source,
    )


def load_policy(path: Path) -> Policy:
    """Read and parse a policy file; PolicyError (with the path) when it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8") from None
    try:
        return parse_policy(text, f"policy {path}")
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


# --- writing -------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped; an
    unpaired surrogate (TOML has no escape for one) is kept as its visible text `\\udXXX`."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= ord(char) <= 0xDFFF:
            out.append(f"\\\\u{ord(char):04x}")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _hex_list(values: Iterable[bytes]) -> str:
    items = sorted(v.hex() for v in values)
    if not items:
        return "[]"
    return "[\n" + "".join(f'  "{item}",\n' for item in items) + "]"


def _string_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in sorted(values)) + "]"


HEADER = """\
# oauth3-verify policy: what this relying party accepts. Use it with
#   oauth3-verify URL --policy THIS_FILE
# A verification exits 0 (VERIFIED) only when the app AND the platform match an entry here.
# Written by --write-policy from what one verification OBSERVED: review every value out of band
# (rebuild the images, recompute the compose hash and the OS measurements) before you rely on it.
"""


def _app_section(policy: Policy) -> str:
    return (
        "\n[app]\n"
        "# SHA-256 of the exact app-compose.json the CVM booted (RTMR3 compose-hash event).\n"
        f"compose_hashes = {_hex_list(policy.compose_hashes)}\n"
        "# Optional: accepted app ids (20 bytes; with KMS the platform assigns them).\n"
        f"app_ids = {_hex_list(policy.app_ids)}\n"
        "# Optional: accepted key providers (RTMR3 key-provider event), NAME:HEX, e.g. the KMS\n"
        '# "kms:<hex of its root public key>", or "none:" for a CVM without one.\n'
        f"key_providers = {_string_list(str(k) for k in policy.key_providers)}\n"
    )


def _os_section(policy: Policy) -> str:
    return (
        "\n[os]\n"
        "# dstack dev images allow root login and debugging: refused unless this is true.\n"
        f"allow_dev = {'true' if policy.allow_dev_os else 'false'}\n"
        "# Accepted OS releases (os_image_hash = sha256 of the image's sha256sum.txt): MRTD\n"
        "# and RTMR0-2 are recomputed from the release's measurement document and must equal\n"
        "# the quote's.\n"
        f"image_hashes = {_hex_list(policy.os_image_hashes)}\n"
        + "".join(
            f'{ACPI_KEYS[name]} = "{value.hex()}"\n' for name, value in policy.acpi_digests.items()
        )
    )


def render_policy(
    policy: Policy,
    observed_from: str,
    suggested: Mapping[str, bytes] | None = None,
    observed_evaluation: int | None = None,
) -> str:
    """The commented TOML text of a policy (what --write-policy writes); `suggested` platform
    values and the observed TCB evaluation number are written commented out, to enable."""
    seen = toml_string(" ".join(observed_from.split()))[1:-1]
    parts = [HEADER, f"# observed from: {seen}\n" if observed_from else "", "format = 1\n"]
    parts.append(_app_section(policy))
    for pin in policy.platforms:
        parts.append(
            "\n# One [[platform]] per accepted platform. MRTD is the TD firmware; RTMR0-2 what\n"
            "# firmware, boot loader, kernel and initrd measured (they also depend on the VM's\n"
            "# CPU count, memory and devices). All four are required.\n"
            "[[platform]]\n"
        )
        if pin.name:
            parts.append(f"name = {toml_string(pin.name)}\n")
        for key in PLATFORM_FIELDS:
            value = pin.values.get(key)
            if value is not None:
                parts.append(f'{key} = "{value.hex()}"\n')
        for key, value in (suggested or {}).items():
            if key not in pin.values:
                parts.append(f'# {key} = "{value.hex()}"\n')
    parts.append(
        "\n[tcb]\n"
        "# Intel TCB statuses accepted (UpToDate, SWHardeningNeeded, ConfigurationNeeded, ...).\n"
        f"allowed_statuses = {_string_list(policy.allowed_tcb)}\n"
        "# Intel security advisories (INTEL-SA-...) accepted on the platform; any other fails.\n"
        f"allowed_advisories = {_string_list(policy.allowed_advisories)}\n"
        "# Refuse collateral older than this Intel TCB evaluation (a TCB recovery raises it).\n"
        + (
            f"min_evaluation_data_number = {policy.min_tcb_evaluation}\n"
            if policy.min_tcb_evaluation is not None
            else f"# min_evaluation_data_number = {observed_evaluation}\n"
            if observed_evaluation is not None
            else ""
        )
        + _os_section(policy)
    )
    if policy.simulated_root_sha256 is not None:
        parts.append(
            "\n[simulated]\n"
            "# SHA-256 of the mock root CA (DER) a simulator signs with. Only used together with\n"
            "# --allow-simulated; an Intel-signed quote never needs it.\n"
            f'root_ca_sha256 = "{policy.simulated_root_sha256.hex()}"\n'
        )
    return "".join(parts)


def _stricter_minimum(current: int | None, given: int) -> int:
    return given if current is None else max(current, given)


# how a flag combines with the file's value: allow-lists widen, a minimum takes the stricter
COMBINE: Mapping[str, Callable[[Any, Any], Any]] = {
    "allowed_tcb": frozenset.union,
    "allowed_advisories": frozenset.union,
    "allow_dev_os": bool.__or__,
    "min_tcb_evaluation": _stricter_minimum,
}


def merge(base: Policy, **flags: Any) -> Policy:
    """`base` with the command line's values: allow-lists widen, minima take the stricter,
    pins may come from one place only (PolicyError when given both in the file and as a flag)."""
    known = {f.name for f in fields(Policy)}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise ValueError(f"unknown policy field {unknown[0]}")
    changes: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None or value in (frozenset(), ()):
            continue
        current = getattr(base, name)
        if name in COMBINE:
            changes[name] = COMBINE[name](current, value)
        elif current in (frozenset(), (), None):
            changes[name] = value
        else:
            raise PolicyError(
                f"{name.replace('_', ' ')} is pinned both in {base.source} and by a flag"
            )
    return replace(base, **changes)
