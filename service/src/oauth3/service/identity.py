"""The app's identity document: canonical /info bytes, computed once, hashed once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

APP_NAME = "oauth3"


@dataclass(frozen=True, slots=True)
class InfoDocument:
    """The exact bytes /info serves and their SHA-256 (what report_data[0:32] binds)."""

    body: bytes
    digest: bytes
    etag: str  # a strong ETag: the quoted hex SHA-256 of the body


def build_info_document(build_info: dict[str, Any] | None, app_version: str) -> InfoDocument:
    """Serialise {build_info, name, version} with sorted keys; these bytes are never rebuilt."""
    body = orjson.dumps(
        {"build_info": build_info, "name": APP_NAME, "version": app_version},
        option=orjson.OPT_SORT_KEYS,
    )
    digest = hashlib.sha256(body).digest()
    return InfoDocument(body=body, digest=digest, etag=f'"{digest.hex()}"')
