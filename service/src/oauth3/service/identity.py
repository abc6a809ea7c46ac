"""The app's identity document: canonical /info bytes, computed once, hashed once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from oauth3.attestation.report_data import info_digest

APP_NAME = "oauth3"


@dataclass(frozen=True, slots=True)
class InfoDocument:
    """The exact bytes /info serves and their SHA-256 (what report_data[0:32] binds)."""

    body: bytes
    digest: bytes
    etag: str  # a strong ETag: the quoted hex SHA-256 of the body
    headers: dict[str, str]  # a 304's headers; a 200 adds the Content-Type
    full_headers: dict[str, str]  # a 200's headers


def build_info_document(build_info: dict[str, Any] | None, app_version: str) -> InfoDocument:
    """Serialise {build_info, name, version} with sorted keys; these bytes are never rebuilt."""
    body = orjson.dumps(
        {"build_info": build_info, "name": APP_NAME, "version": app_version},
        option=orjson.OPT_SORT_KEYS,
    )
    digest = info_digest(body)
    etag = f'"{digest.hex()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    full = {"Content-Type": "application/json", **headers}
    return InfoDocument(body=body, digest=digest, etag=etag, headers=headers, full_headers=full)
