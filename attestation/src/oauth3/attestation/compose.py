"""Compose hash (what a dstack CVM measures into RTMR3) and the mr_config_id v1 encoding."""

from __future__ import annotations

import hashlib

from .errors import AttestationError

MR_CONFIG_ID_SIZE = 48
MR_CONFIG_ID_V1 = 0x01


def compose_hash(app_compose: bytes) -> bytes:
    """SHA-256 of the raw app-compose.json bytes, exactly as the CVM hashes the file."""
    return hashlib.sha256(app_compose).digest()


def app_id_without_kms(compose_digest: bytes) -> bytes:
    """The app id a KMS-less deployment gets: the first 20 bytes of the compose hash."""
    return compose_digest[:20]


def mr_config_id_v1(compose_digest: bytes) -> bytes:
    """Encode a compose hash as mr_config_id version 1: `01 ‖ compose_hash ‖ 15 zero bytes`."""
    if len(compose_digest) != 32:
        raise AttestationError(f"compose hash must be 32 bytes, got {len(compose_digest)}")
    return bytes([MR_CONFIG_ID_V1]) + compose_digest + bytes(MR_CONFIG_ID_SIZE - 33)


def decode_mr_config_id(mr_config_id: bytes) -> bytes | None:
    """The compose hash bound by a v1 mr_config_id; None when unused (all zero); error otherwise."""
    if len(mr_config_id) != MR_CONFIG_ID_SIZE:
        raise AttestationError(f"mr_config_id must be 48 bytes, got {len(mr_config_id)}")
    if not any(mr_config_id):
        return None
    if mr_config_id[0] != MR_CONFIG_ID_V1 or any(mr_config_id[33:]):
        raise AttestationError(f"mr_config_id is neither zero nor version 1: {mr_config_id.hex()}")
    return mr_config_id[1:33]
