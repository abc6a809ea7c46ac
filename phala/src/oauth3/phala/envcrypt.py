"""Encrypted environment variables for a dstack CVM, and the check of the KMS key they are for.

The format is dstack's (its SDKs' `encrypt_env_vars`): an ephemeral X25519 key agrees a secret
with the app's env-encryption public key; that secret is the AES-256-GCM key; the payload is
`{"env": [{"key": …, "value": …}, …]}`; the wire form is hex of `ephemeral public key (32) ‖
IV (12) ‖ ciphertext with tag`. The KMS signs the public key (secp256k1 over keccak256); dstack-sdk
0.5.4 recovers the signer, which needs an eth-hash backend (pycryptodome, pinned with this
distribution; without one the check raises ImportError).
"""

from __future__ import annotations

import json
import secrets
import warnings
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dstack_sdk import verify_env_encrypt_public_key_legacy

IV_SIZE = 12
KEY_SIZE = 32


class EnvKeyError(ValueError):
    """The env-encryption key is malformed, or its signature does not hold."""


def parse_hex(value: object, size: int, what: str) -> bytes:
    """`size` bytes from hex text (an optional 0x prefix); EnvKeyError otherwise."""
    if not isinstance(value, str):
        raise EnvKeyError(f"{what} is missing")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise EnvKeyError(f"{what} is not hex") from None
    if len(raw) != size:
        raise EnvKeyError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


def encrypt_env(envs: Mapping[str, str], public_key: bytes) -> str:
    """The hex `encrypted_env` of `envs` for the app's X25519 env-encryption key."""
    payload = json.dumps({"env": [{"key": k, "value": v} for k, v in envs.items()]}).encode()
    ephemeral = X25519PrivateKey.generate()
    secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    iv = secrets.token_bytes(IV_SIZE)
    sealed = AESGCM(secret).encrypt(iv, payload, None)
    mine = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return (mine + iv + sealed).hex()


def env_key_signer(public_key: bytes, signature: bytes, app_id: str) -> str:
    """The KMS signer (compressed secp256k1 key, 0x hex) whose signature covers this app's env
    key; EnvKeyError when the signature does not recover to any."""
    with warnings.catch_warnings():
        # the API's key endpoint returns the legacy signature (no timestamp); the SDK warns
        warnings.simplefilter("ignore", DeprecationWarning)
        signer = verify_env_encrypt_public_key_legacy(public_key, signature, app_id)
    if not isinstance(signer, str):
        raise EnvKeyError("the env-encryption key's signature does not verify")
    return signer
