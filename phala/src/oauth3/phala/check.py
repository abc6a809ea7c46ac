"""`oauth3-phala check`: a deployed app-compose against the manifest, each difference judged."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from oauth3.attestation import compose_hash
from oauth3.verifier.output import printable

from .manifest import HARMLESS_FIELDS, IMPORTANT_FIELDS, ManifestError, Rendered


def _deployed_app_compose(raw: bytes) -> bytes:
    """The app-compose bytes from a saved app-compose.json or a dstack /Info response."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManifestError("deployed app-compose: not JSON") from None
    if isinstance(document, dict) and "tcb_info" in document:
        tcb_info = document["tcb_info"]
        if isinstance(tcb_info, str):
            try:
                tcb_info = orjson.loads(tcb_info)
            except orjson.JSONDecodeError:
                raise ManifestError("deployed /Info: tcb_info is not JSON") from None
        app_compose = tcb_info.get("app_compose") if isinstance(tcb_info, dict) else None
        if not isinstance(app_compose, str):
            raise ManifestError("deployed /Info: tcb_info.app_compose is missing")
        return app_compose.encode()
    if not isinstance(document, dict) or "docker_compose_file" not in document:
        raise ManifestError("deployed app-compose: no docker_compose_file field")
    return raw


def _shown(document: Mapping[str, Any], field: str) -> str:
    if field not in document:
        return "absent"
    text = printable(orjson.dumps(document[field]).decode())
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class Difference:
    """One field where the deployed app-compose differs from ours, and whether it matters."""

    field: str
    ours: str
    deployed: str
    matters: bool
    why: str

    def line(self) -> str:
        """One line for the report."""
        mark = "MATTERS" if self.matters else "note   "
        return f"  {mark}  {self.field}: ours {self.ours}, deployed {self.deployed} ({self.why})"


def _judge_script(script: Any, allowed_scripts: set[str]) -> tuple[bool, str]:
    digest = hashlib.sha256(str(script or "").encode()).hexdigest()
    if script and digest in allowed_scripts:
        return False, f"sha256 {digest} allowed by you"
    return True, (
        f"runs as root before the containers; sha256 {digest}: read it, then allow it with "
        f"--allow-pre-launch-script {digest}"
    )


def _judge_envs(mine: Any, theirs: Any) -> tuple[bool, str]:
    extra = sorted(set(theirs or []) - set(mine or []))
    if not extra:
        return False, "fewer variables than ours"
    return True, f"the operator may set {', '.join(extra)} at deploy time"


def _judge(field: str, mine: Any, theirs: Any, allowed_scripts: set[str]) -> tuple[bool, str]:
    """Whether a changed field matters, and why."""
    if field == "pre_launch_script":
        return _judge_script(theirs, allowed_scripts)
    if field == "allowed_envs":
        return _judge_envs(mine, theirs)
    known = {
        **{name: (True, why) for name, why in IMPORTANT_FIELDS.items()},
        **{name: (False, why) for name, why in HARMLESS_FIELDS.items()},
    }
    return known.get(field, (True, "a field oauth3 does not know to be harmless"))


def compare(
    rendered: Rendered, deployed_raw: bytes, allowed_scripts: set[str] | None = None
) -> tuple[list[Difference], bytes]:
    """Every field where the deployed app-compose differs from ours, each judged, and the
    deployed compose hash."""
    deployed_bytes = _deployed_app_compose(deployed_raw)
    deployed = orjson.loads(deployed_bytes)
    ours = orjson.loads(rendered.app_compose)
    if not isinstance(deployed, dict):
        raise ManifestError("deployed app-compose: not a JSON object")
    differences = [
        Difference(
            field,
            _shown(ours, field),
            _shown(deployed, field),
            *_judge(field, ours.get(field), deployed.get(field), allowed_scripts or set()),
        )
        for field in sorted(set(ours) | set(deployed))
        if ours.get(field) != deployed.get(field)
    ]
    return differences, compose_hash(deployed_bytes)
