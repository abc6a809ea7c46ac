"""What a deployment leaves on disk: `deployment.json` and a policy, each written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from oauth3.verifier.policy import toml_string

from .check import strict_json
from .manifest import ManifestError


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a
    reader sees the old file or the new one, never half of one."""
    folder = path.parent if str(path.parent) else Path()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any] | None:
    """A previous run's deployment record, or None when there is none; ManifestError when the
    file is not one (it is never overwritten then)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    document = strict_json(raw, str(path))
    if not isinstance(document, dict) or not isinstance(document.get("compose_hash"), str):
        raise ManifestError(f"{path} is not a deployment record; move it away or use --out")
    return document


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write the deployment record (sorted keys, indented) atomically."""
    data = orjson.dumps(dict(record), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    write_atomically(path, data + b"\n")


def policy_text(record: Mapping[str, Any]) -> str:
    """An oauth3-verify policy pinning what the deployment checked: compose hash, app id and,
    when the verify step pinned it, the OS release (MRTD and RTMR0-2 are recomputed from it)."""
    release = record.get("platform_pinned_by") == "release" and record.get("os_image_hash")
    os_pin = (
        f"image_hashes = [{toml_string(str(record['os_image_hash']))}]\n"
        if release
        else "# no OS release pinned: add [[platform]] pins (MRTD, RTMR0-2) checked out of band\n"
    )
    return (
        "# oauth3-verify policy written by oauth3-phala deploy for "
        f"{toml_string(str(record.get('name', '')))}\n"
        "# the compose hash, app id and OS release below were checked before commit; the compose\n"
        "# was read back after it\n"
        "format = 1\n\n[app]\n"
        f"compose_hashes = [{toml_string(str(record['compose_hash']))}]\n"
        f"app_ids = [{toml_string(str(record['app_id']))}]\n\n"
        f"[os]\nallow_dev = false\n{os_pin}"
    )
