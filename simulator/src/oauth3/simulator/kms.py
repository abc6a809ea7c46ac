"""The KMS a simulated CVM boots with, played as dstack @312dc605 (0.6.x) does it.

With a KMS, dstack-util measures, after `boot-mr-done`: `os-image-hash` (the KMS's answer, the
`os_image_hash` of the vm_config the guest sent and the KMS checked), then `key-provider` as
`{"name":"kms","id":"<hex of the KMS root CA's SubjectPublicKeyInfo>"}` (serde's field order, no
spaces). The app id is the one the deployment registered (on Phala Cloud, the app's contract
address), not compose_hash[:20]. The simulated KMS's root key is a P-256 key derived from the seed.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

P256_ORDER = int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)


def key_provider_info(name: str, provider_id: bytes) -> str:
    """The key-provider payload exactly as dstack serialises it: `{"name":…,"id":"<hex>"}`."""
    return json.dumps({"name": name, "id": provider_id.hex()}, separators=(",", ":"))


def kms_root_public_key(secret: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of the P-256 KMS root key derived from `secret`."""
    scalar = int.from_bytes(secret, "big") % (P256_ORDER - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
