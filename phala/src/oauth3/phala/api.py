"""A small Phala Cloud API client (aiohttp): only the calls `oauth3-phala deploy` and `check` make.

Names, headers and shapes follow Phala's own JS SDK (Phala-Network/phala-cloud, `js/src`):
`client.ts` @963a5ff (base URL from `PHALA_CLOUD_API_PREFIX`, default
`https://cloud-api.phala.com/api/v1`; key from `PHALA_CLOUD_API_KEY` sent as `X-API-Key`;
`X-Phala-Version: 2026-06-23`), `actions/cvms/provision_cvm.ts` @358ce20 (`POST /cvms` prepares and
returns `compose_hash`, `app_id`, `app_env_encrypt_pubkey`, `os_image_hash`, …),
`commit_cvm_provision.ts` @046a248 (`POST /cvms` with `app_id` + `compose_hash` commits; the same
pair again returns the same CVM, another hash for the app id is 409),
`provision_cvm_compose_file_update.ts` @33699d8 (`POST /cvms/{id}/compose_file/provision`, then
`PATCH /cvms/{id}/compose_file` with the hash, as its tests show), `stop_cvm.ts` @d96f402
(`POST /cvms/{id}/stop`), `GET /cvms/{id}` and `GET /cvms/{id}/compose_file`, and
`kms/get_app_env_encrypt_pubkey.ts` @0fb89e2 (`GET /kms/{kms}/pubkey/{app_id}` →
`{public_key, signature}`, version header `2026-05-22`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from oauth3.verifier.output import printable

from .check import strict_json
from .manifest import ManifestError

DEFAULT_API_PREFIX = "https://cloud-api.phala.com/api/v1"
API_VERSION = "2026-06-23"
PUBKEY_API_VERSION = "2026-05-22"
MAX_BODY = 4 * 1024 * 1024
RETRIES = 3
RETRY_DELAY_S = 0.5
STATUS_MEANINGS = {
    401: "the API key was refused (set PHALA_CLOUD_API_KEY)",
    403: "the API key may not do this",
    404: "no such CVM or app",
    409: "conflict: this app id already has a CVM with another compose hash",
    465: "on-chain KMS: the compose hash must be registered on the app contract first",
    466: "the compose hash expired; provision again",
    467: "the registration transaction was not verified",
    468: "the compose hash is not registered on-chain",
}


class PhalaApiError(Exception):
    """The API refused or failed; `str()` is one line that names the call and the status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where the API is and how to authenticate, read once from the environment."""

    prefix: str
    key: str
    timeout_s: float = 30.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], timeout_s: float) -> ApiSettings:
        """`PHALA_CLOUD_API_PREFIX` (default Phala's public API) and `PHALA_CLOUD_API_KEY`."""
        key = environ.get("PHALA_CLOUD_API_KEY", "")
        if not key:
            raise PhalaApiError("PHALA_CLOUD_API_KEY is not set")
        prefix = environ.get("PHALA_CLOUD_API_PREFIX") or DEFAULT_API_PREFIX
        if not prefix.startswith(("https://", "http://")):
            raise PhalaApiError("PHALA_CLOUD_API_PREFIX must be an http(s) URL")
        return cls(prefix.rstrip("/"), key, timeout_s)


class PhalaCloud:
    """The calls of a deployment; every answer is strict JSON or a PhalaApiError. Transport
    errors and 5xx are retried (RETRIES times): provisioning only prepares, and a commit of the
    same app id and compose hash is idempotent on Phala's side."""

    def __init__(self, session: aiohttp.ClientSession, settings: ApiSettings) -> None:
        self._session = session
        self._settings = settings

    async def _call(
        self, method: str, path: str, body: Any = None, version: str = API_VERSION
    ) -> bytes:
        headers = {"X-API-Key": self._settings.key, "X-Phala-Version": version}
        url = self._settings.prefix + path
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        problem = ""
        for attempt in range(RETRIES):
            if attempt:
                await asyncio.sleep(RETRY_DELAY_S * attempt)
            try:
                async with self._session.request(
                    method, url, json=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    data = await response.content.read(MAX_BODY + 1)
                    status = response.status
            except TimeoutError:
                problem = f"{method} {path}: no answer within {self._settings.timeout_s:g} s"
                continue
            except aiohttp.ClientError as exc:
                problem = f"{method} {path}: {printable(str(exc) or type(exc).__name__)}"
                continue
            if status >= 500:
                problem = f"{method} {path}: HTTP {status} (Phala Cloud failed; try again later)"
                continue
            if len(data) > MAX_BODY:
                raise PhalaApiError(f"{method} {path}: answer over {MAX_BODY} bytes")
            if status >= 300:
                meaning = STATUS_MEANINGS.get(status, "refused")
                raise PhalaApiError(f"{method} {path}: HTTP {status}: {meaning}", status)
            return data
        raise PhalaApiError(problem)

    async def _json(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        data = await self._call(method, path, body, **kw)
        try:
            document = strict_json(data, f"{method} {path}")
        except ManifestError as exc:
            raise PhalaApiError(str(exc)) from None
        if not isinstance(document, dict):
            raise PhalaApiError(f"{method} {path}: the answer is not a JSON object")
        return document

    async def provision(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Prepare a CVM (nothing runs yet): the backend's compose hash, app id, env key…"""
        return await self._json("POST", "/cvms", dict(request))

    async def commit(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Create the CVM from a provision (`app_id`, `compose_hash`, `encrypted_env`, …)."""
        return await self._json("POST", "/cvms", dict(request))

    async def provision_update(self, cvm_id: str, compose: Mapping[str, Any]) -> dict[str, Any]:
        """Prepare a new compose for a CVM (nothing changes yet): its compose hash, app id…"""
        path = f"/cvms/{_segment(cvm_id)}/compose_file/provision"
        return await self._json("POST", path, dict(compose))

    async def commit_update(self, cvm_id: str, request: Mapping[str, Any]) -> None:
        """Apply a prepared compose: `compose_hash`, `encrypted_env`, `env_keys`."""
        await self._call("PATCH", f"/cvms/{_segment(cvm_id)}/compose_file", dict(request))

    async def cvm(self, cvm_id: str) -> dict[str, Any]:
        """The CVM's record (status, instance id, …)."""
        return await self._json("GET", f"/cvms/{_segment(cvm_id)}")

    async def compose_file(self, cvm_id: str) -> dict[str, Any]:
        """The app-compose the backend stored for the CVM, as a JSON object."""
        return await self._json("GET", f"/cvms/{_segment(cvm_id)}/compose_file")

    async def stop(self, cvm_id: str) -> None:
        """Force-stop the CVM."""
        await self._call("POST", f"/cvms/{_segment(cvm_id)}/stop")

    async def env_pubkey(self, kms: str, app_id: str) -> dict[str, Any]:
        """The KMS's env-encryption public key for the app and its signature."""
        path = f"/kms/{_segment(kms)}/pubkey/{_segment(app_id)}"
        return await self._json("GET", path, version=PUBKEY_API_VERSION)


def _segment(value: str) -> str:
    """A path segment from an id, refused unless it is plain (no traversal, no query)."""
    if not value or not all(c.isalnum() or c in "-_." for c in value) or value in (".", ".."):
        raise PhalaApiError(f"not a valid id: {printable(value)!r}")
    return value
