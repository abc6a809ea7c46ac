"""`oauth3-phala check`: a deployed app-compose against the manifest, each difference judged.

The deployed document is read with the client tools' one strict loader (`parse_strict_json`): a
key given twice is refused (a guest's parser might keep either value). Values are compared with
their exact JSON types under dstack's defaults (an absent `secure_time` is `true`; `1` is not
`true`), and everything shown is escaped first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import orjson

from oauth3.attestation import StrictJSONError, compose_hash, parse_strict_json
from oauth3.verifier.output import printable

from .manifest import ManifestError, Rendered
from .schema import ABSENT, HARMLESS_FIELDS, IMPORTANT_FIELDS, effective, schema_problems

MAX_SHOWN = 60


def strict_json(raw: bytes | str, what: str) -> Any:
    """`parse_strict_json` (duplicate keys, NaN/Infinity, invalid UTF-8 and deep nesting refused)
    with its refusal as a ManifestError naming `what`."""
    try:
        return parse_strict_json(raw)
    except StrictJSONError as exc:
        raise ManifestError(f"{what}: {exc}") from None


@cache
def official_prelaunch_scripts() -> Mapping[str, str]:
    """sha256 -> "Phala official pre-launch script vX (source)", from the shipped table."""
    table = orjson.loads(
        resources.files("oauth3.phala").joinpath("phala_prelaunch_scripts.json").read_bytes()
    )
    return {
        entry[
            "sha256"
        ]: f"Phala's official pre-launch script {entry['version']} ({entry['source']})"
        for entry in table["scripts"]
    }


def deployed_app_compose(raw: bytes) -> bytes:
    """The app-compose bytes from a saved app-compose.json or a dstack /Info response."""
    document = strict_json(raw, "deployed app-compose")
    if isinstance(document, dict) and "tcb_info" in document:
        tcb_info = document["tcb_info"]
        if isinstance(tcb_info, str):
            tcb_info = strict_json(tcb_info, "deployed /Info: tcb_info")
        app_compose = tcb_info.get("app_compose") if isinstance(tcb_info, dict) else None
        if not isinstance(app_compose, str):
            raise ManifestError("deployed /Info: tcb_info.app_compose is missing")
        try:
            return app_compose.encode()
        except UnicodeEncodeError:
            raise ManifestError("deployed /Info: app_compose is not UTF-8") from None
    if not isinstance(document, dict) or "docker_compose_file" not in document:
        raise ManifestError("deployed app-compose: no docker_compose_file field")
    return raw


def _shown(value: Any) -> str:
    if value is ABSENT:
        return "absent"
    text = printable(json.dumps(value, ensure_ascii=False))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


@dataclass(frozen=True, slots=True)
class Difference:
    """One field where the deployed app-compose differs from ours, and whether it matters."""

    field: str
    ours: str
    deployed: str
    matters: bool
    why: str

    def line(self) -> str:
        """One line for the report, every part escaped."""
        mark = "MATTERS" if self.matters else "note   "
        field, why = printable(self.field), printable(self.why)
        return f"  {mark}  {field}: ours {self.ours}, deployed {self.deployed} ({why})"


def _judge_script(script: Any, allowed_scripts: set[str]) -> tuple[bool, str]:
    if script is ABSENT or script == "":
        return False, "no pre-launch script"
    digest = hashlib.sha256(str(script).encode("utf-8", "surrogatepass")).hexdigest()
    if digest in allowed_scripts:
        return False, f"sha256 {digest} allowed by you"
    official = official_prelaunch_scripts().get(digest)
    if official is not None:
        return False, f"{official}, sha256 {digest}"
    return True, (
        f"runs as root before the containers; sha256 {digest}: read it, then allow it with "
        f"--allow-pre-launch-script {digest}"
    )


def _judge_envs(mine: Any, theirs: Any) -> tuple[bool, str]:
    if not isinstance(theirs, list) or not isinstance(mine, list):
        return True, "not a list of names"
    extra = sorted(set(map(str, theirs)) - set(map(str, mine)))
    if not extra:
        return False, "fewer variables than ours"
    return True, f"the operator may set {', '.join(extra)} at deploy time"


def _judge(field: str, mine: Any, theirs: Any, allowed_scripts: set[str]) -> tuple[bool, str]:
    """Whether a changed field matters, and why."""
    if field == "pre_launch_script":
        return _judge_script(theirs, allowed_scripts)
    if field == "allowed_envs":
        return _judge_envs(mine, theirs)
    if field in IMPORTANT_FIELDS:
        return True, IMPORTANT_FIELDS[field]
    if field in HARMLESS_FIELDS:
        return False, HARMLESS_FIELDS[field]
    return True, "a field oauth3 does not know to be harmless"


def _same(mine: Any, theirs: Any) -> bool:
    if mine is ABSENT or theirs is ABSENT:
        return mine is theirs
    return json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What `check` found: the judged differences and the deployed compose hash."""

    differences: list[Difference]
    deployed_hash: bytes

    @property
    def mattering(self) -> list[str]:
        """The fields whose difference matters, escaped."""
        return [printable(d.field) for d in self.differences if d.matters]


def compare(
    rendered: Rendered, deployed_bytes: bytes, allowed_scripts: set[str] | None = None
) -> CheckReport:
    """Every field where the deployed app-compose (its exact bytes) differs from ours, each
    judged under dstack's defaults; schema breaches of the deployed document always matter."""
    deployed = strict_json(deployed_bytes, "deployed app-compose")
    if not isinstance(deployed, dict):
        raise ManifestError("deployed app-compose: not a JSON object")
    ours = orjson.loads(rendered.app_compose)
    differences = [
        Difference("(schema)", "valid", "invalid", True, problem)
        for problem in schema_problems(deployed, allow_unknown=True)
    ]
    for field in sorted(set(ours) | set(deployed)):
        mine, theirs = effective(ours, field), effective(deployed, field)
        if not _same(mine, theirs):
            matters, why = _judge(field, mine, theirs, allowed_scripts or set())
            differences.append(Difference(field, _shown(mine), _shown(theirs), matters, why))
    return CheckReport(differences, compose_hash(deployed_bytes))
